"""CIFAR-10 and CIFAR-100 from the official python archives, checksum verified.

On-disk layout under ``root`` (default :func:`~decaylab.data.cache_dir`), the same as
torchvision's, so a torchvision data folder can be passed as ``root``:

- ``cifar-10-python.tar.gz`` (md5 ``c58f30108f718f92721af3b95e74349a``) with members
  ``cifar-10-batches-py/data_batch_1`` … ``data_batch_5``, ``test_batch`` and ``batches.meta``;
- ``cifar-100-python.tar.gz`` (md5 ``eb9058c3a382ffc7106e4002c42a8d85``) with members
  ``cifar-100-python/train``, ``test`` and ``meta``;
- or, instead of an archive, its extracted folder (``cifar-10-batches-py/``,
  ``cifar-100-python/``), each file checked against its own official md5.

Each batch file is a Python-2 pickle of a dict with ``b"data"`` (``N×3072`` uint8, the 1024 red,
then green, then blue pixels of each 32×32 image, row-major) and ``b"labels"`` (CIFAR-10) or
``b"fine_labels"`` / ``b"coarse_labels"`` (CIFAR-100). Checksums are verified *before* anything
is unpickled, which is why verification cannot be switched off: a file you made yourself is loaded
by passing its own ``md5=``. The unpickler itself only makes numpy arrays, lists, dicts, numbers and
strings: a pickle that names anything else (code) is refused.

The archive is downloaded from https://www.cs.toronto.edu/~kriz/ only when it is missing and
``download=True``; offline, the error says where to put the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .core import CorruptDataError, MissingDataError, TensorData, cache_dir, file_md5, split_held_out

__all__ = ["CIFAR", "CIFAR_FILE_MD5", "CifarSpec", "load_cifar", "load_cifar10", "load_cifar100"]


@dataclass(frozen=True)
class CifarSpec:
    """What one CIFAR archive is: file name, URL, official md5, members, label keys, statistics."""

    name: str
    archive: str
    url: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_keys: dict[str, tuple[bytes, bytes, int]]  # label set -> (batch key, meta names key, classes)
    mean: tuple[float, float, float]  # per-channel mean and std of the training images in [0, 1]
    std: tuple[float, float, float]

    def member(self, file: str) -> str:
        return f"{self.folder}/{file}"

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


CIFAR = {
    "cifar10": CifarSpec(
        name="cifar10",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_keys={"fine": (b"labels", b"label_names", 10)},
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_keys={"fine": (b"fine_labels", b"fine_label_names", 100),
                    "coarse": (b"coarse_labels", b"coarse_label_names", 20)},
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}

#: Official md5 of every file inside the archives (as torchvision checks them), used when a
#: folder extracted from the archive is read instead of the archive itself.
CIFAR_FILE_MD5 = {
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-10-batches-py/batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48",
}


# --------------------------------------------------------------------------------------------------
# files


def _where_to_put(spec: CifarSpec, path: Path, md5: str) -> str:
    return (f"put {spec.archive} (md5 {md5}, the 'python version' from {spec.url}) at {path}, "
            f"or its extracted folder at {path.parent / spec.folder}")


def _check_archive_md5(spec: CifarSpec, path: Path, md5: str) -> None:
    actual = file_md5(path)
    if actual != md5:
        raise CorruptDataError(
            f"{spec.archive} at {path} has md5 {actual}, expected {md5}: the file is incomplete or not the "
            f"official archive. Delete it and load again with download=True, or {_where_to_put(spec, path, md5)}")


def _download(spec: CifarSpec, path: Path, md5: str) -> None:
    """Download the archive to ``path`` (via a ``.part`` file), verifying its md5 before keeping it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(spec.url, timeout=60) as response, open(part, "wb") as f:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
    except (urllib.error.URLError, OSError) as e:  # URLError, timeouts, connection resets
        part.unlink(missing_ok=True)
        raise MissingDataError(f"{spec.name}: no {spec.archive} at {path} and downloading {spec.url} failed "
                               f"({type(e).__name__}: {e}). On a machine without network, "
                               f"{_where_to_put(spec, path, md5)}") from e
    if digest.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise CorruptDataError(f"downloaded {spec.url} has md5 {digest.hexdigest()}, expected {md5}; "
                               f"nothing was saved to {path}. Try again, or {_where_to_put(spec, path, md5)}")
    os.replace(part, path)


def _read_archive(spec: CifarSpec, path: Path) -> dict[str, bytes]:
    """The bytes of the needed members, read in one sequential pass over the gzip stream."""
    wanted = {spec.member(f) for f in spec.files}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if name in wanted and info.isfile():
                    handle = tar.extractfile(info)
                    assert handle is not None
                    found[name] = handle.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise CorruptDataError(f"{path} is not a readable gzip-compressed tar archive ({type(e).__name__}: {e}); "
                               f"expected {spec.archive} with members {sorted(wanted)}") from e
    missing = sorted(wanted - set(found))
    if missing:
        raise CorruptDataError(f"{path} has no member(s) {missing}; expected {spec.archive} with members "
                               f"{sorted(wanted)}")
    return found


def _read_folder(spec: CifarSpec, folder: Path) -> dict[str, bytes]:
    found = {}
    for file in spec.files:
        member, path = spec.member(file), folder / file
        blob = path.read_bytes()
        actual, expected = hashlib.md5(blob).hexdigest(), CIFAR_FILE_MD5[member]
        if actual != expected:
            raise CorruptDataError(f"{path} has md5 {actual}, expected {expected} (the file {member} of the "
                                   f"official {spec.archive}); replace the folder with a fresh extraction")
        found[member] = blob
    return found


# What a CIFAR python-format file may name: numpy's array reconstruction (under numpy 1's and 2's module
# names) and the codec Python 3 writes bytes with. Anything else is refused before it is called: even a
# file whose checksum was given by hand cannot run code.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not something a CIFAR file holds; refused")
        if module == "numpy.core.multiarray":  # numpy 2 keeps it under numpy._core
            module = np.ndarray.__reduce__(np.zeros(1))[0].__module__
        return super().find_class(module, name)


def _unpickle(spec: CifarSpec, blob: bytes, where: str, keys: tuple[bytes, ...]) -> dict[bytes, object]:
    try:
        obj = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... : all mean "not this file"
        raise CorruptDataError(f"{where} is not a readable pickle ({type(e).__name__}: {e}); expected the "
                               f"{spec.name} python-format pickle of a dict with keys {list(keys)}") from e
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise CorruptDataError(f"{where} holds {got}; expected a dict with keys {list(keys)}")
    return obj


def _batch_arrays(spec: CifarSpec, blob: bytes, where: str, label_key: bytes, num_classes: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    obj = _unpickle(spec, blob, where, (b"data", label_key))
    data = np.asarray(obj[b"data"])
    labels = np.asarray(obj[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CorruptDataError(f"{where}: b'data' has dtype {data.dtype} and shape {data.shape}; expected uint8 "
                               f"of shape (N, 3072)")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer) \
            or (len(labels) and (labels.min() < 0 or labels.max() >= num_classes)):
        raise CorruptDataError(f"{where}: {label_key!r} must be {len(data)} integer labels in [0, {num_classes}), "
                               f"got dtype {labels.dtype} and shape {labels.shape}")
    return data, labels.astype(np.int64)


# --------------------------------------------------------------------------------------------------
# loading


def load_cifar(
    name: str = "cifar10",
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    md5: str | None = None,
    labels: str = "fine",
    normalize: bool = True,
) -> TensorData:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``): 50,000 train / 10,000 test.

    Looks for the archive ``root/<archive>`` (verifying ``md5``, default the official one), then for
    its extracted folder, and downloads the archive when neither is there and ``download`` is true.
    ``labels`` picks CIFAR-100's ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).

    Returns float32 ``x`` of shape ``(N, 3, 32, 32)``; with ``normalize`` (default) each channel is
    ``(pixel / 255 − mean_c) / std_c`` with the standard statistics of the training images
    (CIFAR-10: mean 0.4914, 0.4822, 0.4465, std 0.2470, 0.2435, 0.2616; CIFAR-100: mean 0.5071,
    0.4865, 0.4409, std 0.2673, 0.2564, 0.2762), else ``pixel / 255``. ``y`` is int64.
    ``meta["classes"]`` holds the class names from the archive's meta file.

    Raises :class:`~decaylab.data.MissingDataError` when the data is not there and cannot be
    downloaded, :class:`~decaylab.data.CorruptDataError` on a checksum mismatch or an unreadable
    file; both name the file and what was expected.
    """
    if name not in CIFAR:
        raise ValueError(f"name must be one of {sorted(CIFAR)}, got {name!r}")
    spec = CIFAR[name]
    if labels not in spec.label_keys:
        raise ValueError(f"labels must be one of {sorted(spec.label_keys)} for {name}, got {labels!r}")
    if md5 is not None and (not isinstance(md5, str) or len(md5) != 32):
        raise ValueError(f"md5 must be a 32-character hex digest or None (the official one), got {md5!r}")
    expected_md5 = (md5 or spec.md5).lower()
    root_path = cache_dir(root)
    archive, folder = root_path / spec.archive, root_path / spec.folder

    if archive.is_file():
        _check_archive_md5(spec, archive, expected_md5)
        blobs, source = _read_archive(spec, archive), archive
    elif folder.is_dir() and all((folder / f).is_file() for f in spec.files):
        blobs, source = _read_folder(spec, folder), folder
    elif download:
        _download(spec, archive, expected_md5)
        blobs, source = _read_archive(spec, archive), archive
    else:
        partial = ""
        if folder.is_dir():
            partial = f" ({folder} exists but lacks {[f for f in spec.files if not (folder / f).is_file()]})"
        raise MissingDataError(f"{spec.name} not found{partial} and download=False: "
                               f"{_where_to_put(spec, archive, expected_md5)}")

    label_key, names_key, num_classes = spec.label_keys[labels]

    def arrays(files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_batch_arrays(spec, blobs[spec.member(f)], f"{spec.member(f)} in {source}", label_key, num_classes)
                 for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x_train, y_train = arrays(spec.train_files)
    x_test, y_test = arrays(spec.test_files)
    meta_obj = _unpickle(spec, blobs[spec.member(spec.meta_file)], f"{spec.member(spec.meta_file)} in {source}",
                         (names_key,))
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta_obj[names_key]]  # type: ignore[union-attr]
    if len(classes) != num_classes:
        raise CorruptDataError(f"{spec.member(spec.meta_file)} in {source}: {names_key!r} lists {len(classes)} "
                               f"class names, expected {num_classes}")

    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)

    def images(data: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(data).view(len(data), 3, 32, 32).to(torch.float32).div_(255.0)
        return x.sub_(mean).div_(std) if normalize else x

    meta = {
        "source": str(source),
        "md5": expected_md5 if source == archive else "per-file (CIFAR_FILE_MD5)",
        "classes": classes,
        "labels": labels,
        "normalize": {"mean": spec.mean, "std": spec.std} if normalize else None,
    }
    # the test batch held out in two halves: validation (the first 5,000 images), then test; training as is
    val, test = split_held_out(len(y_test))
    meta["validation"] = f"the first {val.stop} images of the test batch (the test split: the rest)"
    return TensorData(images(x_train), torch.from_numpy(y_train), images(x_test[test]),
                      torch.from_numpy(np.ascontiguousarray(y_test[test])), num_classes=num_classes,
                      name=name if labels == "fine" else f"{name}-{labels}", meta=meta, x_val=images(x_test[val]),
                      y_val=torch.from_numpy(np.ascontiguousarray(y_test[val])))


def load_cifar10(root: str | os.PathLike[str] | None = None, *, download: bool = True, md5: str | None = None,
                 normalize: bool = True) -> TensorData:
    """CIFAR-10; see :func:`load_cifar`."""
    return load_cifar("cifar10", root, download=download, md5=md5, normalize=normalize)


def load_cifar100(root: str | os.PathLike[str] | None = None, *, download: bool = True, md5: str | None = None,
                  labels: str = "fine", normalize: bool = True) -> TensorData:
    """CIFAR-100 (``labels="fine"``: 100 classes, ``"coarse"``: 20); see :func:`load_cifar`."""
    return load_cifar("cifar100", root, download=download, md5=md5, labels=labels, normalize=normalize)
