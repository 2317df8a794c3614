"""Suite-wide settings.

Every test runs torch on one thread: the models here are tiny, their matmuls are far too small to share
out, and on a 2-core machine two OpenMP threads spin against each other and against other processes
(measured: 5-50x slower steps). Session scope, so that module-scoped runs use the same thread count as
the tests that repeat them (floating-point sums differ in the last bits otherwise).
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
