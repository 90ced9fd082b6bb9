"""The one TOML reader of decaylab's data files (sweep specs, run configs): UTF-8 text in, a table out, or
one ``ValueError`` line that names the file and what is wrong. Standard library only (``tomli`` on 3.10)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("reading TOML on Python 3.10 needs the 'tomli' package: pip install tomli") from error

__all__ = ["TOMLDecodeError", "loads", "read_text", "read_toml"]

TOMLDecodeError = tomllib.TOMLDecodeError


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """The UTF-8 text of the file ``path`` (``what``: "sweep spec file", "config", ... for the messages).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a folder or a file that is not UTF-8.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder; give a TOML file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                         f"{error.start}); save it as UTF-8") from None


def loads(text: str, where: str) -> dict[str, Any]:
    """The table of TOML ``text``; ``where`` names its source in the message of a ``ValueError``."""
    try:
        return tomllib.loads(text)
    except TOMLDecodeError as error:
        raise ValueError(f"{where} is not valid TOML: {error}") from None


def read_toml(path: str | os.PathLike[str], what: str) -> tuple[dict[str, Any], str]:
    """The table of the TOML file ``path`` and its text (see :func:`read_text` and :func:`loads`)."""
    text = read_text(path, what)
    return loads(text, f"{what} {str(Path(path))!r}"), text
