"""Fixtures shared by several test files."""
from __future__ import annotations

import sys

import pytest
import torch


def _with_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test: tiny tensors and small models run fastest and most
    steadily there (threads only add start-up and synchronization, and contend on a busy 2-core box)."""
    yield from _with_one_thread()


@pytest.fixture(scope="module")
def one_thread_per_module():
    """:func:`one_thread` once for a whole module (files with many short tests)."""
    yield from _with_one_thread()


_TORCH_CONFIG_MODULES = ("torch._dynamo.config", "torch._inductor.config", "torch._functorch.config")


@pytest.fixture(autouse=True, scope="module")
def _torch_config_left_intact(request):
    """Fail the module that leaves one of torch's config entries unreadable.

    torch's config modules hide an entry that is deleted; a patch undone by delete-then-set
    (``monkeypatch.setattr`` on a config module, with pytest 9) leaves it hidden for the rest of the
    process, and every later compile fails far from the cause. Patch them with their own
    ``config.patch(...)`` context managers instead.
    """
    yield
    broken = []
    for name in _TORCH_CONFIG_MODULES:
        module = sys.modules.get(name)
        for key, entry in getattr(module, "_config", {}).items():
            if getattr(entry, "hide", False):
                broken.append(f"{name}.{key}")
    if broken:
        pytest.fail(f"{request.module.__name__} left torch config entries unreadable: {', '.join(broken)}")


@pytest.fixture
def executors(monkeypatch):
    """Record which executor ran each bucket: a list of (executor name, the bucket's parameter shapes)."""
    from decaylab.optim.executors import EXECUTORS

    calls: list[tuple[str, tuple]] = []

    def wrap(name, fn):
        def inner(bucket):
            calls.append((name, tuple(tuple(p.shape) for p in bucket.params)))
            return fn(bucket)

        return inner

    for name, executor in EXECUTORS.items():
        for method in ("step", "moments", "update"):
            monkeypatch.setattr(executor, method, wrap(name, getattr(executor, method)))
    return calls
