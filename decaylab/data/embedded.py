"""Datasets that need no network: MNIST-1D (generated), scikit-learn's digits (shipped), and a
byte-level text corpus made of the Python standard library's own source files.

- :func:`load_mnist1d` — Greydanus's MNIST-1D, generated locally by the ``mnist1d`` package from
  its default arguments and a seed (never its download path), cached as ``.npz``.
- :func:`load_digits` — scikit-learn's 1,797 8×8 digits, a seeded split, standardized with the
  training split's statistics.
- :func:`load_pystdlib_text` — the ``.py`` files of the running Python's standard library,
  concatenated in sorted order, as a byte-level language-modelling corpus.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import platform
import random
import sysconfig
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .core import END_OF_TEXT, MissingDataError, TensorData, TextData, cache_dir, split_bytes, split_held_out

__all__ = ["MNIST1D_DEFAULT_SHAPES", "MNIST1D_VAL_SEED_OFFSET", "STDLIB_EXCLUDED_DIRS", "load_digits", "load_mnist1d",
           "load_pystdlib_text"]


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------------------------------
# MNIST-1D

#: The shapes the mnist1d package documents for its default arguments (README: "by default, 4000
#: training examples and 1000 testing examples", each "1D timeseries of length 40", digits 0-9).
MNIST1D_DEFAULT_SHAPES = {"n_train": 4000, "n_test": 1000, "length": 40, "num_classes": 10}

_MNIST1D_FILE_KEYS = ("x_train", "y_train", "x_test", "y_test")
#: The validation split of MNIST-1D with seed ``s`` is generated with seed ``s + MNIST1D_VAL_SEED_OFFSET``
#: (its first ``n_test`` training signals): new signals from the same process, so the training and test
#: splits stay exactly those of the package's dataset.
MNIST1D_VAL_SEED_OFFSET = 1000


def _import_mnist1d() -> Any:
    try:
        import mnist1d.data  # noqa: F401 - the package imports matplotlib.pyplot; Agg is fine headless
    except ImportError as e:
        raise ImportError("MNIST-1D needs the 'mnist1d' package: pip install 'mnist1d>=0.0.2'") from e
    import mnist1d

    return mnist1d


def _mnist1d_generate(mnist1d: Any, args: dict[str, Any]) -> dict[str, np.ndarray]:
    # make_dataset seeds and draws from the *global* `random` and `np.random` states; put them back
    # so that loading data does not change the random numbers of the caller's run.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        raw = mnist1d.data.make_dataset(mnist1d.utils.ObjectView(dict(args)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x_train": np.asarray(raw["x"], dtype=np.float32),
        "y_train": np.asarray(raw["y"], dtype=np.int64),
        "x_test": np.asarray(raw["x_test"], dtype=np.float32),
        "y_test": np.asarray(raw["y_test"], dtype=np.int64),
    }


def _mnist1d_expected(args: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    n_total = (int(args["num_samples"]) // 10) * 10  # make_dataset draws num_samples // 10 per class
    n_train = int(n_total * args["train_split"])
    length = int(args["final_seq_length"])
    return {"x_train": (n_train, length), "y_train": (n_train,),
            "x_test": (n_total - n_train, length), "y_test": (n_total - n_train,)}


def _mnist1d_read_cache(path: Path, expected: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in _MNIST1D_FILE_KEYS}
        for k, shape in expected.items():
            dtype = np.int64 if k.startswith("y") else np.float32
            if arrays[k].shape != shape or arrays[k].dtype != dtype:
                raise ValueError(f"{k} is {arrays[k].dtype} of shape {arrays[k].shape}, expected "
                                 f"{np.dtype(dtype)} of shape {shape}")
        return arrays
    except Exception as e:  # a cache we wrote ourselves: regenerate it rather than fail the run
        warnings.warn(f"MNIST-1D cache {path} is unreadable ({type(e).__name__}: {e}); expected an .npz "
                      f"with arrays {', '.join(_MNIST1D_FILE_KEYS)}. Generating it again.", stacklevel=3)
        return None


def _write_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)  # atomic: concurrent sweeps never read half a file
    finally:
        tmp.unlink(missing_ok=True)


def load_mnist1d(
    root: str | os.PathLike[str] | None = None,
    *,
    seed: int = 42,
    args: Mapping[str, Any] | None = None,
) -> TensorData:
    """MNIST-1D (Greydanus & Kobak), generated locally: 4000 train / 1000 test signals of length 40.

    The ``mnist1d`` package's ``make_dataset(get_dataset_args())`` builds the data from its ten
    1-D digit templates with random padding, translation, scaling, shear and noise; ``seed``
    replaces the package's ``seed`` argument (its default is 42, the paper's dataset) and ``args``
    overrides any other of its arguments (``num_samples``, ``shuffle_seq``, ``final_seq_length``,
    ...). Nothing is downloaded. The arrays are cached in
    ``cache_dir(root)/mnist1d/mnist1d-seed{seed}-{hash}.npz`` (the hash covers the arguments and
    the package version), so only the first load generates (about 3 s); an unreadable cache file
    is generated again with a warning. The global ``random`` and ``numpy.random`` states are left
    as they were.

    Returns float32 ``x`` of shape ``(N, 40)`` (models that want channels add ``x[:, None]``) and
    int64 ``y``, standardized by the package itself (zero mean, unit std over the whole set). The
    validation split (as many signals as the test split) is the package's dataset generated with seed
    ``seed + MNIST1D_VAL_SEED_OFFSET`` (its first training signals): the same process, other draws, so
    the training and test splits are exactly the paper's.
    """
    seed = _check_seed(seed)
    arrays, meta = _mnist1d_arrays(root, seed, args)
    val, val_meta = _mnist1d_arrays(root, seed + MNIST1D_VAL_SEED_OFFSET, args)
    n_val = len(arrays["y_test"])
    meta["validation"] = {"seed": seed + MNIST1D_VAL_SEED_OFFSET, "signals": n_val, "cache": val_meta["cache"],
                          "from": "the first training signals of that generation"}
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    return TensorData(**tensors, num_classes=10, name="mnist1d", meta=meta,
                      x_val=torch.from_numpy(np.ascontiguousarray(val["x_train"][:n_val])),
                      y_val=torch.from_numpy(np.ascontiguousarray(val["y_train"][:n_val])))


def _mnist1d_arrays(root: str | os.PathLike[str] | None, seed: int,
                    args: Mapping[str, Any] | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays of one MNIST-1D generation (cached) and where they came from."""
    mnist1d = _import_mnist1d()
    full_args = dict(mnist1d.data.get_dataset_args(as_dict=True))
    full_args.pop("url", None)  # the download path is never used
    overrides = dict(args or {})
    if "seed" in overrides:
        raise ValueError("pass the MNIST-1D seed as load_mnist1d(seed=...), not in args")
    unknown = sorted(set(overrides) - set(full_args))
    if unknown:
        allowed = sorted(k for k in full_args if k != "seed")
        raise ValueError(f"unknown MNIST-1D argument(s) {unknown}; allowed: {allowed}")
    full_args.update(overrides)
    full_args["seed"] = seed
    version = metadata.version("mnist1d")
    key_text = json.dumps({"mnist1d": version, **full_args}, sort_keys=True, default=str)
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    path = cache_dir(root) / "mnist1d" / f"mnist1d-seed{seed}-{key}.npz"
    expected = _mnist1d_expected(full_args)

    arrays = _mnist1d_read_cache(path, expected)
    generated = arrays is None
    if arrays is None:
        arrays = _mnist1d_generate(mnist1d, full_args)
        for k, shape in expected.items():
            if arrays[k].shape != shape:
                raise RuntimeError(f"mnist1d {version} generated {k} of shape {arrays[k].shape}, expected {shape} "
                                   f"(documented default: {MNIST1D_DEFAULT_SHAPES}); has the package changed?")
        _write_npz_atomic(path, arrays)
    meta = {
        "source": f"mnist1d {version} make_dataset, generated locally",
        "seed": seed,
        "args": full_args,
        "cache": str(path),
        "generated": generated,
    }
    return arrays, meta


# --------------------------------------------------------------------------------------------------
# scikit-learn digits


def load_digits(
    root: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    test_fraction: float = 0.3,
) -> TensorData:
    """scikit-learn's 8×8 handwritten digits (1,797 images, shipped inside scikit-learn).

    A seeded split: ``perm = torch.randperm(1797, generator=torch.Generator().manual_seed(seed))``,
    the first ``int(1797 * test_fraction)`` indices are held out: their first half is the validation
    split, the rest the test split (the training split is that of ``decaylab quickstart``). Pixels (0..16) are divided
    by 16 and standardized per pixel with the *training* split's mean and standard deviation,
    ``x ← (x − mean_train) / (std_train + 1e-3)`` (the 1e-3 keeps always-blank pixels finite).
    ``x`` is float32 ``(N, 64)`` (reshape to
    ``(N, 1, 8, 8)`` for a CNN), ``y`` int64. ``root`` is accepted for a uniform call and unused.
    """
    seed = _check_seed(seed)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits as sklearn_load_digits

    x_np, y_np = sklearn_load_digits(return_X_y=True)
    x = torch.tensor(x_np, dtype=torch.float32) / 16.0
    y = torch.tensor(y_np, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_held = int(len(x) * test_fraction)
    held, train = perm[:n_held], perm[n_held:]
    val_part, test_part = split_held_out(n_held)
    val, test = held[val_part], held[test_part]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-3
    x = (x - mean) / std
    meta = {
        "source": "sklearn.datasets.load_digits",
        "seed": seed,
        "test_fraction": test_fraction,
        "validation": "the first half of the held-out test_fraction, the test split the rest",
        "standardization": "per pixel, training split's mean and std (+1e-3), after dividing by 16",
        "image_shape": (1, 8, 8),
    }
    return TensorData(x[train], y[train], x[test], y[test], num_classes=10, name="digits", meta=meta, x_val=x[val],
                      y_val=y[val])


# --------------------------------------------------------------------------------------------------
# the Python standard library as a byte-level corpus

#: Folders skipped when collecting the standard library's sources: installed third-party
#: packages, and the test suites (deliberately malformed files, odd encodings, and most of the size).
STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


def _stdlib_sources(stdlib: Path) -> list[str]:
    """Relative POSIX paths of the standard library's .py files, sorted, skipping excluded folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS]
        rel = Path(dirpath).relative_to(stdlib)
        found.extend((rel / name).as_posix() for name in filenames if name.endswith(".py"))
    return sorted(found)


def load_pystdlib_text(
    root: str | os.PathLike[str] | None = None,
    *,
    max_bytes: int | None = 2_000_000,
    val_fraction: float = 0.1,
    separator: bytes = bytes([END_OF_TEXT]),
) -> TextData:
    """The running Python's standard-library sources as a byte-level language-modelling corpus.

    The ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` (skipping
    :data:`STDLIB_EXCLUDED_DIRS`: third-party packages and test suites) are read as raw bytes in
    sorted order of their relative paths, joined with ``separator`` (default one
    :data:`END_OF_TEXT` byte), and the stream is cut at ``max_bytes`` (``None``: all of it, about
    12 MB on CPython 3.11). The first ``1 - val_fraction`` of the bytes is ``train``; the held-out
    rest is split in two halves, ``val`` and ``test``. Nothing random is involved: the same Python gives
    the same bytes.

    The exact bytes depend on the Python version and distribution (the standard library changes
    between releases), so ``meta`` records ``python_version`` and the ``sha256`` of the corpus
    (before the split); compare those before comparing losses across machines. ``root`` is
    accepted for a uniform call and unused.
    """
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral)
                                  or max_bytes < 2):
        raise ValueError(f"max_bytes must be an int >= 2 or None, got {max_bytes!r}")
    if not isinstance(separator, bytes):
        raise ValueError(f"separator must be bytes, got {type(separator).__name__}")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = _stdlib_sources(stdlib) if stdlib.is_dir() else []
    if not files:
        raise MissingDataError(f"expected the Python standard library's .py sources under {stdlib} "
                               f"(sysconfig.get_paths()['stdlib']), found none: this Python ships its "
                               f"standard library zipped or compiled only")
    parts: list[bytes] = []
    total = 0
    for rel in files:
        blob = (stdlib / rel).read_bytes()
        parts.append(blob)
        total += len(blob) + len(separator)
        if max_bytes is not None and total >= max_bytes:
            break
    data = separator.join(parts)
    if max_bytes is not None:
        data = data[:max_bytes]
    train, held = split_bytes(data, val_fraction)
    val, test = (held[part] for part in split_held_out(len(held)))
    meta = {
        "source": str(stdlib),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "files": len(parts),
        "first_file": files[0],
        "last_file": files[len(parts) - 1],
        "separator": separator,
        "val_fraction": val_fraction,
    }
    return TextData(train=train, val=val, test=test, name="pystdlib-text", meta=meta)
