"""Waiting for something a background actor or server does (bounded, so a test fails instead of hanging)."""

import time


def wait_for(predicate, timeout: float, every: float = 0.25):
    """Call `predicate` every `every` s until it returns something truthy (returned); AssertionError after
    `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s")
