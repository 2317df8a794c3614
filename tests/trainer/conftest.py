import pytest

from .helpers import write_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A folder of small synthetic documents (see helpers.write_corpus)."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))
