import os

import pytest
import torch

GIB_PER_WORKER = 3  # measured: a worker peaks at 1.4 GiB, 2.4 GiB with the servers and ranks it starts (2026-12-07)


def pytest_xdist_auto_num_workers(config):
    """``pytest -n auto``: one worker per core this process may use, as many as the memory holds."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return max(1, min(cores, int(memory_gib // GIB_PER_WORKER)))


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # Tiny tensors: one thread is faster than two and keeps results reproducible; in parallel runs, one per worker.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
