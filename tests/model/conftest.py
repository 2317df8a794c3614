import os

import pytest
import torch


def pytest_configure(config):
    """test_transformers_compat reruns some of these tests against another transformers in a subprocess
    (DSLA_EXPECT_TRANSFORMERS_VERSION set): make sure that version is the one imported."""
    expected = os.environ.get("DSLA_EXPECT_TRANSFORMERS_VERSION")
    if expected:
        import transformers

        assert transformers.__version__ == expected, (transformers.__version__, transformers.__file__)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny models' matmuls are far too small to share out; with two threads on a busy 2-core
    machine each one waits on the other (measured: 18x slower). Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
