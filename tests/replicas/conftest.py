"""Replica tests run torch on one thread: on the 2 shared CI cores, two OpenMP threads spin against
each other and against other processes, which made these tiny-model steps 5-50x slower."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
