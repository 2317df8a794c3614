"""The Triton DSLA kernels against `naive_dsla` on the CPU, through triton's interpreter.

Triton reads TRITON_INTERPRET when it is imported and when each kernel is decorated, so kernels can
only be interpreted in a process that had the variable set from the start. This test runs the cases
in `triton_cases.py` in a fresh Python with TRITON_INTERPRET=1 and fails unless every one of them
passed (none skipped). The calling test session's environment is left alone, so the rest of the
suite keeps the PyTorch backend on the CPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("triton_cases.py")
NUM_CASES = 22
REPO = Path(__file__).resolve().parents[2]


def test_triton_kernels_match_the_reference_under_the_interpreter():
    pytest.importorskip("triton")  # a declared dependency on Linux; absent only elsewhere
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(CASES), "-q", "-p", "no:cacheprovider", "-o", "addopts="],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    report = proc.stdout[-8000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) == NUM_CASES, report
    assert not re.search(r"\d+ (skipped|xfailed|deselected)", proc.stdout), report
