"""The hybrid cache against transformers 5.17, the GPU image's version, as well as the installed one.

5.17 and 5.2x differ where the hybrid cache touches them: the attention/forward keyword is
`past_key_values` in 5.17 and `cache` in 5.2x, outputs carry `.past_key_values` vs `.cache`, and the
mask helpers' signatures changed. 5.17 also needs huggingface-hub < 2. Both are installed (no
dependencies) into `.cache/transformers-5.17` (git-ignored, reused across runs), and the decode and
generate equivalence tests are rerun in a subprocess with that directory first on the path.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / ".cache" / "transformers-5.17"
VERSION = "5.17.0"
PINS = [f"transformers=={VERSION}", "huggingface-hub==1.33.0"]  # 5.17 requires huggingface-hub>=1.5,<2
RERUN = ["tests/model/test_cache.py", "tests/model/test_surgery.py"]


def ensure_installed() -> None:
    if (TARGET / f"transformers-{VERSION}.dist-info").exists():
        return
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=TARGET.parent, prefix=".transformers-5.17-"))
    try:
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                              "--disable-pip-version-check", "--target", str(staging), *PINS],
                             capture_output=True, text=True, timeout=300)
        assert pip.returncode == 0, f"installing {PINS} failed:\n{pip.stdout}\n{pip.stderr}"
        try:
            os.replace(staging, TARGET)  # atomic: a concurrent run sees all of it or none
        except OSError:
            assert (TARGET / f"transformers-{VERSION}.dist-info").exists()  # another run won the race
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def test_decode_and_generate_equivalence_under_transformers_5_17():
    ensure_installed()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TARGET), str(REPO)]),
           "DSLA_EXPECT_TRANSFORMERS_VERSION": VERSION}
    probe = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__, "
                            "transformers.__file__)"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    version, path = probe.stdout.split()
    assert version == VERSION and Path(path).is_relative_to(TARGET), probe.stdout + probe.stderr

    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *RERUN], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0 and " passed" in summary and "failed" not in summary, run.stdout[-4000:] + run.stderr
