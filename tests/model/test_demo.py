import argparse

import pytest

from dsla_serve.model import demo


def parse(argv):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(argv)


def test_demo_runs_and_reports(capsys):
    assert demo.run(parse(["--num-layers", "4", "--max-new-tokens", "5", "--prompt", "hi"])) == 0
    out = capsys.readouterr().out
    assert "converted: layers 3, 1 (conversion order); depth 2: 3, 1 run as DSLA" in out
    assert "KV cache per token: depth 0 2.0 KiB, depth 2 1.0 KiB (-50 %)" in out
    assert "DSLA state per sequence: 128.0 KiB" in out and "generated 5 tokens" in out
    diff = float(out.split("max |difference| ")[1].split()[0])
    assert diff < 1e-4


def test_demo_rejects_bad_options():
    with pytest.raises(SystemExit, match="--depth: depth must be an int in"):
        demo.run(parse(["--num-layers", "2", "--depth", "3"]))
    with pytest.raises(SystemExit, match="--layers: layer index 5 is out of range"):
        demo.run(parse(["--num-layers", "2", "--layers", "5"]))
    with pytest.raises(SystemExit, match="--layers must be comma-separated integers"):
        demo.run(parse(["--layers", "a,b"]))
