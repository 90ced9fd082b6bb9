"""Building and loading the native step: ``_native.c``, built once per machine with the system C compiler.

torch's fused Adam kernel expresses only the decay rules that are an AdamW step with other constants
(:mod:`decaylab.optim.executors.fused`). The others — ``prox_euclid``, ``cautious`` and
``stable`` — and stacked models with one lr and λ each need their own loop. ``_native.c`` is that
loop: every form, amsgrad and maximize, float32 and float64, one call per bucket, one pass over
memory (``stable`` adds one read of the gradients for its global mean); and the same for SGD with
momentum, dampening and Nesterov.

The library is built at first use: ``cc -O3 -march=native -fopenmp`` (OpenMP when the compiler has
it, else one thread) into ``$DECAYLAB_CACHE_DIR`` (default ``~/.cache/decaylab``), keyed by the
source, the compiler and the CPU, so later processes load it in a millisecond. Without a working
compiler :func:`library` returns None and ``backend="auto"`` uses the other paths;
``DECAYLAB_NATIVE=0`` turns the native path off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("_native.c")
ABI = 3
NCOEF = 7  # columns of an Adam coefficient row (_native.c: C_*)
NSGD = 4  # columns of an SGD coefficient row (_native.c: S_*)
BASE_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
              "-std=gnu11", "-shared", "-fPIC"]
_lock = threading.Lock()
_failure: str | None = None  # why the library could not be built (once per process)


def cache_dir() -> Path:
    root = os.environ.get("DECAYLAB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "decaylab")
    return Path(root) / "native"


def compiler() -> str | None:
    """The C compiler: ``$CC``, else ``cc`` or ``gcc`` on the PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _key(cc: str) -> str:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), version.encode(), " ".join(BASE_FLAGS).encode(),
                 platform.machine().encode(), _cpu_signature().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:20]


def _build(cc: str, target: Path) -> None:
    """Compile into ``target`` atomically (concurrent processes may build at once: the last rename wins)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    os.close(fd)
    errors = []
    try:
        for extra in (["-fopenmp"], []):  # OpenMP when the compiler has it
            cmd = [cc, *BASE_FLAGS, *extra, str(SOURCE), "-o", tmp, "-lm"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if proc.returncode == 0:
                os.replace(tmp, target)
                return
            errors.append(f"{' '.join(cmd)}: " + " | ".join(proc.stderr.strip().splitlines()[-5:]))
        raise RuntimeError(errors[-1])
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _load() -> ctypes.CDLL | None:
    global _failure
    if os.environ.get("DECAYLAB_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        _failure = "DECAYLAB_NATIVE=0 turns it off"
        return None
    cc = compiler()
    if cc is None:
        _failure = "no C compiler (cc, gcc or clang; or $CC) on the PATH"
        return None
    try:
        name = f"decaylab_native_{_key(cc)}.so"
        target = cache_dir() / name
        if not target.exists():
            try:
                _build(cc, target)
            except OSError:  # the cache directory is not writable: build where this user can write
                user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
                target = Path(tempfile.gettempdir()) / f"decaylab-{user}" / name
                if not target.exists():
                    _build(cc, target)
        lib = ctypes.CDLL(str(target))
        if lib.decaylab_native_abi() != ABI:
            raise RuntimeError(f"{target} has ABI {lib.decaylab_native_abi()}, expected {ABI}")
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _failure = f"building or loading the native step failed: {exc}"
        warnings.warn(f"decaylab: {_failure}; backend='auto' uses the fused, compiled and foreach paths",
                      stacklevel=3)
        return None
    i64p, dp, vpp = ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_void_p)
    for name in ("decaylab_adam_float", "decaylab_adam_double"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_int64, vpp, i64p, i64p, i64p, dp, dp, dp, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        fn.restype = ctypes.c_int
    for name in ("decaylab_sgd_float", "decaylab_sgd_double"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_int64, vpp, i64p, i64p, i64p, dp, dp, dp, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        fn.restype = ctypes.c_int
    for name in ("decaylab_sums_float", "decaylab_sums_double"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_int64, vpp, i64p, i64p, i64p, dp, ctypes.POINTER(ctypes.c_int), dp, i64p,
                       ctypes.c_int]
        fn.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded library, building it on first use; None when it cannot be built (see :func:`why_not`)."""
    with _lock:
        return _load()


def available() -> bool:
    return library() is not None


def why_not() -> str | None:
    """Why the native library is not available, or None when it is."""
    return None if available() else _failure


def reset() -> None:
    """Forget the loaded library (tests: rebuild under another environment)."""
    global _failure
    with _lock:
        _load.cache_clear()
        _failure = None


if __name__ == "__main__":  # python -m decaylab.optim.executors.native.build: build now, say where
    ok = available()
    print(f"{'built' if ok else 'not available'}: {cache_dir()} ({why_not() or 'ok'})")
    sys.exit(0 if ok else 1)
