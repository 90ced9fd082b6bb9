"""Hugging Face ``datasets`` text corpora (OpenWebText, TinyStories) as byte-level LM data.

A corpus ``name`` lives at ``root/<name>/`` (``root`` defaults to
:func:`~decaylab.data.cache_dir`). For a requested ``split`` (default ``"train"``) the first of
these that exists is read:

1. ``root/<name>/<split>/`` written by ``Dataset.save_to_disk`` — which is also what
   ``DatasetDict.save_to_disk(root/<name>)`` writes for each split, and where downloads go;
2. ``root/<name>/`` itself written by ``Dataset.save_to_disk`` (a single dataset: split ``"train"``);
3. ``.parquet`` or ``.arrow`` files anywhere under ``root/<name>/`` whose path has ``split`` as a
   word (``data/train-00000-of-00080.parquet``); if no file names any split, all are ``"train"``.

Only when none exists and ``download=True`` and the Hub is reachable (``HF_DATASETS_OFFLINE`` /
``HF_HUB_OFFLINE`` not set), the corpus is *streamed* from the Hub with
``datasets.load_dataset(repo, split=split, streaming=True, cache_dir=root/"huggingface")`` until
``max_bytes`` are read, and those documents are saved as the local copy (1.) with a
``decaylab.json`` note of how much was read. Streaming reads only what is asked for: OpenWebText
is ~40 GB, and a weight-decay sweep on a laptop wants the first ~100 MB. A later call that wants
more than a saved prefix holds streams again when it can, and otherwise warns and uses the prefix.

To prepare an offline machine: on one that is online, ``decaylab.data.load("tinystories")`` (or
``datasets.load_dataset(repo)[split].save_to_disk(root/name/split)``), then copy ``root/<name>/``.

Bytes: each document's text is UTF-8 encoded, documents are joined with ``separator`` (default one
:data:`~decaylab.data.END_OF_TEXT` byte, 0xFF, which UTF-8 never contains), the stream is cut at
``max_bytes``, and the first ``1 - val_fraction`` of it is ``train``, the rest ``val``: the split
is by byte offset, in the dataset's own document order, so nothing random is involved.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
import shutil
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core import END_OF_TEXT, CorruptDataError, MissingDataError, TextData, cache_dir, split_bytes, split_held_out

__all__ = ["HF_CORPORA", "HFCorpus", "load_hf_text"]


@dataclass(frozen=True)
class HFCorpus:
    """A Hugging Face Hub text corpus: its repository id and a one-line description."""

    repo: str
    description: str
    text_field: str = "text"


HF_CORPORA = {
    "openwebtext": HFCorpus("Skylion007/openwebtext",
                            "OpenWebText (Gokaslan & Cohen), the open GPT-2 WebText replica nanoGPT trains on; "
                            "~8M web documents, ~40 GB"),
    "tinystories": HFCorpus("roneneldan/TinyStories",
                            "TinyStories (Eldan & Li), ~2.1M short synthetic children's stories, ~2 GB"),
}

#: The file decaylab writes beside a streamed download: repo, split, bytes read, complete or not.
NOTE_FILE = "decaylab.json"

_TRUE = {"1", "ON", "YES", "TRUE"}


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError("Hugging Face text corpora need the 'datasets' package: pip install 'datasets>=2.19'") from e
    return datasets


def hub_offline() -> bool:
    """Whether Hugging Face's offline mode is on (``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE``)."""
    if any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")):
        return True
    try:
        import datasets.config as config  # read once, at import, by datasets itself
    except ImportError:
        return False
    return bool(getattr(config, "HF_HUB_OFFLINE", False) or getattr(config, "HF_DATASETS_OFFLINE", False))


# --------------------------------------------------------------------------------------------------
# local copies


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def _split_files(base: Path, split: str) -> list[Path]:
    files = sorted(p for p in base.rglob("*") if p.suffix in (".parquet", ".arrow") and p.is_file())

    def words(p: Path) -> set[str]:
        return set(re.split(r"[/\\\-._ ]+", p.relative_to(base).as_posix()))

    named = [p for p in files if split in words(p)]
    if named:
        return named
    # No file names this split; if no file names any usual split either, the files are one "train" split.
    if split == "train" and not any(words(p) & {"train", "validation", "valid", "val", "test"} for p in files):
        return files
    return []


def _expected_layout(base: Path, split: str) -> str:
    return (f"a folder written by Dataset.save_to_disk at {base / split} (or at {base} for split 'train'), "
            f"a DatasetDict.save_to_disk folder at {base} with a {split!r} split, or .parquet/.arrow files under "
            f"{base} with {split!r} in their names")


def _load_saved(datasets: Any, path: Path, base: Path, split: str) -> Any:
    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:  # FileNotFoundError for a bad folder, ArrowInvalid/JSONDecodeError for damage
        raise CorruptDataError(f"{path} could not be read by datasets.load_from_disk ({type(e).__name__}: {e}); "
                               f"expected {_expected_layout(base, split)}") from e


def _read_files(datasets: Any, files: list[Path], text_field: str) -> Iterator[Any]:
    for f in files:
        try:
            if f.suffix == ".parquet":
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(f)
                if text_field not in pf.schema_arrow.names:
                    raise CorruptDataError(f"{f} has columns {pf.schema_arrow.names}; expected a string column "
                                           f"{text_field!r} (pass text_field=...)")
                for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
                    yield from batch.column(0).to_pylist()
            else:
                yield from _documents(datasets.Dataset.from_file(str(f)), text_field, f)
        except CorruptDataError:
            raise
        except Exception as e:
            raise CorruptDataError(f"{f} could not be read as {f.suffix[1:]} ({type(e).__name__}: {e}); expected a "
                                   f"table with a string column {text_field!r}") from e


def _documents(ds: Any, text_field: str, where: Path) -> Iterator[Any]:
    columns = list(getattr(ds, "column_names", None) or [])
    if text_field not in columns:
        raise CorruptDataError(f"the dataset at {where} has columns {columns}; expected a string column "
                               f"{text_field!r} (pass text_field=...)")
    try:
        for batch in ds.select_columns([text_field]).iter(batch_size=1024):
            yield from batch[text_field]
    except Exception as e:  # a damaged shard found while reading
        raise CorruptDataError(f"reading the dataset at {where} failed ({type(e).__name__}: {e}); expected "
                               f"readable Arrow data with a string column {text_field!r}") from e


def _local_documents(datasets: Any, base: Path, split: str, text_field: str) -> tuple[Iterator[Any], Path] | None:
    """Documents of the local copy of ``split`` and where they are, or None if there is none."""
    if _is_saved_dataset(base / split):
        ds = _load_saved(datasets, base / split, base, split)
        return _documents(ds, text_field, base / split), base / split
    if _is_saved_dataset(base):
        if split != "train":
            raise MissingDataError(f"{base} holds a single dataset, which counts as split 'train'; for split "
                                   f"{split!r} expected {_expected_layout(base, split)}")
        ds = _load_saved(datasets, base, base, split)
        return _documents(ds, text_field, base), base
    if (base / "dataset_dict.json").is_file():
        try:
            splits = json.loads((base / "dataset_dict.json").read_text()).get("splits", [])
        except (OSError, ValueError):
            splits = []
        raise MissingDataError(f"{base} is a DatasetDict folder with splits {splits} but no readable "
                               f"{split!r} split at {base / split}")
    if base.is_dir():
        files = _split_files(base, split)
        if files:
            return _read_files(datasets, files, text_field), base
    return None


# --------------------------------------------------------------------------------------------------
# bytes


def _to_bytes(
    documents: Iterable[Any], max_bytes: int | None, separator: bytes, where: Path | str
) -> tuple[bytes, int]:
    """Join UTF-8 encoded documents with ``separator`` and cut at ``max_bytes``; also the count used."""
    parts: list[bytes] = []
    total = 0
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            raise CorruptDataError(f"document {i} of {where} is {type(doc).__name__}, expected str")
        parts.append(doc.encode("utf-8"))
        total += len(parts[-1]) + len(separator)
        if max_bytes is not None and total >= max_bytes:
            break
    data = separator.join(parts)
    return (data[:max_bytes] if max_bytes is not None else data), len(parts)


def _read_note(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / NOTE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _prefix_too_short(note: dict[str, Any] | None, max_bytes: int | None) -> bool:
    """Whether a saved streamed prefix holds fewer bytes of text than ``max_bytes`` asks for."""
    if not note or note.get("complete", True):
        return False
    return max_bytes is None or int(note.get("text_bytes", 0)) < max_bytes


def _stream_from_hub(datasets: Any, corpus: HFCorpus, name: str, base: Path, root: Path, split: str,
                     max_bytes: int | None, text_field: str) -> list[str]:
    """Stream documents of ``split`` until ``max_bytes`` of text, save them at base/split, return them."""
    try:
        stream = datasets.load_dataset(corpus.repo, split=split, streaming=True, cache_dir=str(root / "huggingface"))
        docs: list[str] = []
        text_bytes = 0
        complete = True
        for row in stream:
            doc = row[text_field]
            if not isinstance(doc, str):
                raise CorruptDataError(f"row {len(docs)} of {corpus.repo} split {split!r}: {text_field!r} is "
                                       f"{type(doc).__name__}, expected str")
            docs.append(doc)
            text_bytes += len(doc.encode("utf-8")) + 1
            if max_bytes is not None and text_bytes >= max_bytes:
                complete = False  # stopped early: what is saved is a prefix of the split
                break
    except CorruptDataError:
        raise
    except Exception as e:  # ConnectionError, DatasetNotFoundError, HTTP errors, ...
        raise MissingDataError(f"no local copy of {name!r} split {split!r} and streaming it from the Hub "
                               f"({corpus.repo}) failed ({type(e).__name__}: {e}); expected "
                               f"{_expected_layout(base, split)}") from e
    target = base / split
    tmp = base / f".{split}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.Dataset.from_dict({text_field: docs}).save_to_disk(str(tmp))
    (tmp / NOTE_FILE).write_text(json.dumps({"repo": corpus.repo, "split": split, "documents": len(docs),
                                             "text_bytes": text_bytes, "complete": complete}, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return docs


def load_hf_text(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    split: str = "train",
    max_bytes: int | None = 100_000_000,
    val_fraction: float = 0.1,
    download: bool = True,
    repo: str | None = None,
    text_field: str | None = None,
    separator: bytes = bytes([END_OF_TEXT]),
) -> TextData:
    """A Hugging Face text corpus as byte-level LM data (layout, download and bytes: module docstring).

    ``name`` is ``"openwebtext"``, ``"tinystories"`` (see :data:`HF_CORPORA`) or any folder name
    under ``root`` holding a local copy (``repo=`` then names its Hub repository for downloads).
    ``max_bytes`` caps the byte stream (default 100 MB; ``None`` reads the whole split, which for
    OpenWebText means ~40 GB in memory). ``meta`` records the source, the documents used and the
    sha256 of the stream.

    Raises :class:`~decaylab.data.MissingDataError` when there is no local copy and it cannot be
    downloaded (offline, or ``download=False``), :class:`~decaylab.data.CorruptDataError` when the
    local copy cannot be read or lacks the text column; both say what was expected where.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"name must be a plain folder name such as {sorted(HF_CORPORA)}, got {name!r}")
    if not isinstance(split, str) or not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise ValueError(f"split must be a plain split name such as 'train' or 'validation', got {split!r}")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral)
                                  or max_bytes < 2):
        raise ValueError(f"max_bytes must be an int >= 2 or None, got {max_bytes!r}")
    if not isinstance(separator, bytes):
        raise ValueError(f"separator must be bytes, got {type(separator).__name__}")
    split_bytes(b"", val_fraction)  # checks val_fraction before anything is read or downloaded
    corpus = HF_CORPORA.get(name)
    if repo is not None:
        corpus = HFCorpus(repo, f"{repo} on the Hugging Face Hub", text_field or "text")
    text_field = text_field or (corpus.text_field if corpus else "text")

    datasets = _import_datasets()
    root_path = cache_dir(root)
    base = root_path / name
    can_stream = download and corpus is not None and not hub_offline()
    note = _read_note(base / split)  # only a streamed download has one
    if _prefix_too_short(note, max_bytes) and can_stream:
        local = None  # the saved prefix is shorter than asked for: stream a longer one (before opening it)
    else:
        local = _local_documents(datasets, base, split, text_field)
        note = note if local is not None and local[1] == base / split else None
    if local is None:
        if not can_stream:
            why = ("download=False" if not download else
                   "no Hub repository is known for it (pass repo=...)" if corpus is None else
                   "Hugging Face offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)")
            raise MissingDataError(f"no local copy of {name!r} split {split!r} and {why}; expected "
                                   f"{_expected_layout(base, split)}")
        assert corpus is not None
        docs = _stream_from_hub(datasets, corpus, name, base, root_path, split, max_bytes, text_field)
        documents: Iterable[Any] = docs
        source: Path = base / split
        note = _read_note(source)
    else:
        documents, source = local
        if _prefix_too_short(note, max_bytes):
            assert note is not None
            warnings.warn(f"{source} holds only the first {note.get('text_bytes')} bytes of {name!r} split "
                          f"{split!r}, fewer than max_bytes={max_bytes}; using them (could not stream more: "
                          f"offline or download=False)", stacklevel=2)

    data, n_docs = _to_bytes(documents, max_bytes, separator, source)
    if not data:
        raise CorruptDataError(f"{source} holds no text for {name!r} split {split!r}")
    train, held = split_bytes(data, val_fraction)
    val, test = (held[part] for part in split_held_out(len(held)))  # validation, then test
    meta = {
        "source": str(source),
        "repo": corpus.repo if corpus else None,
        "split": split,
        "documents": n_docs,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "separator": separator,
        "val_fraction": val_fraction,
        "download_note": note,
    }
    return TextData(train=train, val=val, test=test, name=name, meta=meta)
