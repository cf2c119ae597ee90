import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # Tiny tensors: one thread is faster than two and keeps results reproducible.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
