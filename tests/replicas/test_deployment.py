"""The Ray Serve deployment around the engine, on a local CPU Ray: stream, reconfigure depth, stats."""

import os

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from dsla_serve.model import Artifact, convert  # noqa: E402
from dsla_serve.model.tiny import build_tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def local_ray():
    env = {"env_vars": {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    yield
    serve.shutdown()
    ray.shutdown()


def test_deployment_streams_reconfigures_depth_and_reports_stats(local_ray, tmp_path):
    from dsla_serve.replicas.deployment import EngineDeployment

    trained = convert(build_tiny_model("llama", seed=0), [3, 1, 0, 2])  # tiny:llama's weights (seed 0)
    art = Artifact.create(tmp_path / "art", trained, base_model_id="tiny:llama", config=None, order=[3, 1, 0, 2])
    for layer in (3, 1):
        art.append_layer(trained, layer, {})
    app = EngineDeployment.options(user_config={"depth": 1}).bind(  # Serve calls reconfigure({"depth": 1})
        "tiny:llama", artifact=str(tmp_path / "art"), engine_kwargs={"max_model_len": 64, "max_num_seqs": 2})
    handle = serve.run(app, name="engine-test", route_prefix=None)

    deltas = list(handle.options(stream=True).generate.remote("Hello", {"temperature": 0, "max_tokens": 5,
                                                                       "ignore_eos": True}))
    assert sum(len(d["token_ids"]) for d in deltas) == 5 and deltas[-1]["finish_reason"] == "length"
    assert {d["depth"] for d in deltas} == {1}
    stats = handle.stats.remote().result()
    assert stats["depth"] == 1 and stats["max_depth"] == 2 and stats["completed"] == 1
    replica = stats["replica"]

    art.append_layer(trained, 0, {})  # published while serving: reconfigure refreshes, then drains to depth 3
    handle.reconfigure.remote({"depth": 3}).result()
    out = handle.generate_text.remote([1, 2, 3], {"temperature": 0, "max_tokens": 4, "ignore_eos": True}).result()
    assert out["depth"] == 3 and len(out["token_ids"]) == 4
    stats = handle.stats.remote().result()
    assert stats["depth"] == 3 and stats["max_depth"] == 3
    assert stats["completed"] == 2 and stats["replica"] == replica  # the same replica: no restart
