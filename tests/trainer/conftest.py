import pytest
import torch

from .helpers import write_corpus


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from two threads on a shared 2-core machine (and lose a lot to waits).
    Module scope: module-scoped runs must use the same thread count as the tests that repeat them,
    or their floating-point sums differ in the last bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A folder of small synthetic documents (see helpers.write_corpus)."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))
