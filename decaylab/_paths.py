"""Output paths checked before the work that fills them: a command that would train for an hour and then
fail to write its result (a folder that is a file, a file that is a folder, no permission) says so at
once, in one line that names its option. Standard library only."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["check_output_dir", "check_output_file", "describe_os_error"]


def describe_os_error(error: OSError) -> str:
    """``strerror`` of an OSError (``No space left on device``), or its text."""
    return error.strerror or str(error)


def check_output_dir(path: str | os.PathLike[str], option: str) -> Path:
    """Make the folder ``path`` if it is missing and check that files can be written in it; returns it.

    Raises ``ValueError`` naming ``option`` (e.g. ``--out``) when ``path`` is a file, a parent of it is
    a file, or the folder cannot be made or written to.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {os.fspath(path)}: is a file, not a folder; give a folder (made if missing)")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {os.fspath(path)}: {parent} is a file, so no folder can be made inside it")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # os.access is not enough (root, read-only mounts, ACLs): write and remove a small file
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".decaylab-write-check-"):
            pass
    except OSError as error:
        raise ValueError(f"{option} {os.fspath(path)}: cannot write there ({describe_os_error(error)})") from None
    return folder


def check_output_file(path: str | os.PathLike[str], option: str) -> Path:
    """Check that the file ``path`` can be written (its folder is made if missing); returns it.

    Raises ``ValueError`` naming ``option`` when ``path`` is a folder, or its folder cannot be made or
    written to.
    """
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"{option} {os.fspath(path)}: is a folder; give the path of a file")
    if file.exists() and not os.access(file, os.W_OK):
        raise ValueError(f"{option} {os.fspath(path)}: the file exists and cannot be written")
    check_output_dir(file.parent, f"{option} {os.fspath(path)}: its folder")
    return file
