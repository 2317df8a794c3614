import os


def pytest_configure(config):
    """test_transformers_compat reruns some of these tests against another transformers in a subprocess
    (DSLA_EXPECT_TRANSFORMERS_VERSION set): make sure that version is the one imported."""
    expected = os.environ.get("DSLA_EXPECT_TRANSFORMERS_VERSION")
    if expected:
        import transformers

        assert transformers.__version__ == expected, (transformers.__version__, transformers.__file__)
