"""`dsla-serve convert`: a run with its summary table, a resume that has nothing left, clear errors."""

import yaml

from dsla_serve.cli import main
from dsla_serve.model import Artifact

from .helpers import config_dict


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
    assert "convert.yaml: training.stepz: unknown field" in capsys.readouterr().err

    data = config_dict(tmp_path / "no-such-folder", "artifact")
    assert main(["convert", _write(tmp_path, data)]) == 2
    assert f"data path {tmp_path / 'no-such-folder'} does not exist" in capsys.readouterr().err
