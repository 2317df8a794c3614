"""`dsla-serve convert`: a run with its summary table, resuming (also after SIGKILL), clear errors."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from dsla_serve.cli import main
from dsla_serve.model import Artifact

from .helpers import config_dict, layer_hashes

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, data) -> str:
    path = tmp_path / "convert.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_convert_runs_prints_a_summary_and_resumes(corpus, tmp_path, capsys):
    data = config_dict(corpus, "artifact", depth=1, training={"steps": 3})  # output relative to the YAML
    path = _write(tmp_path, data)
    assert main(["convert", path]) == 0
    out, err = capsys.readouterr()
    assert "layer 0: 100%" in err and "3/3" in err  # the per-layer progress bar
    for column in ("depth", "layer", "rank", "val loss", "ppl ratio", "seconds"):
        assert column in out
    assert Artifact.open(tmp_path / "artifact").depth == 1

    assert main(["convert", path, "--depth", "2", "--quiet"]) == 0  # continues with the next layer
    out, err = capsys.readouterr()
    assert "layer 1:" not in err  # --quiet: no bars
    assert "resuming" in err and "at depth 1 of 2" in err and "val loss" in out
    assert Artifact.open(tmp_path / "artifact").depth == 2


def test_convert_reports_bad_fields_and_data_paths(corpus, tmp_path, capsys):
    data = config_dict(corpus, "artifact")
    data["training"]["stepz"] = 3
    assert main(["convert", _write(tmp_path, data)]) == 2
    assert "convert.yaml: training.stepz: unknown key 'stepz' (did you mean 'steps'?)" in capsys.readouterr().err

    data = config_dict(tmp_path / "no-such-folder", "artifact")
    assert main(["convert", _write(tmp_path, data)]) == 2
    assert f"data path {tmp_path / 'no-such-folder'} does not exist" in capsys.readouterr().err


def test_a_run_killed_inside_layer_two_resumes_to_the_same_bytes(corpus, tmp_path):
    """SIGKILL (no cleanup at all) while layer 2 trains; the rerun equals an uninterrupted run."""
    data = config_dict(corpus, "killed", depth=2, training={"steps": 60})
    path = _write(tmp_path, data)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dsla_serve.cli", "convert", path, "--quiet"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = tmp_path / "killed" / "manifest.json"
    try:
        deadline = time.monotonic() + 180
        while not (manifest.exists() and '"layer": 0' in manifest.read_text()):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "layer 1 was never published"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert Artifact.open(tmp_path / "killed").depth == 1  # killed inside layer 2

    assert main(["convert", path, "--quiet"]) == 0  # resumes in this process
    reference = tmp_path / "reference.yaml"
    reference.write_text(yaml.safe_dump({**data, "output": "uninterrupted"}))
    assert main(["convert", str(reference), "--quiet"]) == 0
    assert layer_hashes(tmp_path / "killed") == layer_hashes(tmp_path / "uninterrupted")
