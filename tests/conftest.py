"""Fixtures shared by several test files."""
from __future__ import annotations

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
