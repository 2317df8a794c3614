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


@pytest.fixture(scope="session")
def reference_artifact(tmp_path_factory):
    """An artifact of the reference model with one layer published by `dsla-serve convert` (a few CPU
    steps; see tests/reference.py), made once per test session: (artifact folder, the convert YAML)."""
    import yaml

    from dsla_serve.cli import main

    from .reference import convert_config

    tmp = tmp_path_factory.mktemp("reference-artifact")
    config = tmp / "convert.yaml"
    config.write_text(yaml.safe_dump(convert_config(tmp / "artifact")))
    assert main(["convert", str(config), "--quiet"]) == 0
    return tmp / "artifact", config


@pytest.fixture(scope="session")
def s3():
    """An S3-compatible server on localhost for the whole session (tests/s3.py), its endpoint and dummy
    credentials in this process's environment (the way s3fs and boto3 read them). One per session: s3fs
    keeps its clients, which read the endpoint once."""
    import os

    from .s3 import MotoServer

    saved = {k: os.environ.get(k) for k in MotoServer().env}
    with MotoServer() as server:
        os.environ.update(server.env)
        try:
            yield server
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
