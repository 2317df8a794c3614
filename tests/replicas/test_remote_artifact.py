"""An engine reading its artifact from an object store (fsspec's memory:// standing in for S3): new layers
are downloaded outside the stepping thread, and a store that hangs or fails never stalls generation."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from dsla_serve.model import Artifact
from dsla_serve.model.manifest import ArtifactUnavailable
from dsla_serve.model.storage import RemoteStore, StorageError
from dsla_serve.replicas import Engine, SamplingParams

from .helpers import ORDER, hf_greedy, tiny_converted

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


def generated(engine, prompt) -> list[int]:
    """The greedy tokens of `prompt`; fails (instead of hanging) when the engine does not answer in 60 s."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: engine.add_request(prompt, GREEDY).result()).result(timeout=60) \
            .outputs[0].token_ids


def test_a_slow_or_unreachable_store_never_stalls_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("DSLA_SERVE_CACHE", str(tmp_path / "cache"))
    uri = f"memory://replica-{uuid.uuid4().hex[:8]}/art"
    trained = tiny_converted("llama", seed=31)
    art = Artifact.create(uri, trained, base_model_id="tiny:llama", config=None, order=ORDER)
    art.append_layer(trained, ORDER[0], {"ppl_ratio": 1.0})
    engine = Engine(tiny_converted("llama", seed=31, order=[]), artifact=uri, depth=1, max_model_len=64,
                    max_num_seqs=2)
    assert engine.max_depth == 1
    art.append_layer(trained, ORDER[1], {"ppl_ratio": 1.0})

    release, reading = threading.Event(), threading.Event()
    down = {"now": False}
    real_read = RemoteStore.read

    def read(store, name):
        if down["now"]:
            raise StorageError(f"cannot read {store.where(name)}: EndpointConnectionError")
        if name.startswith("layer_"):
            reading.set()
            release.wait(60)  # the download of the new layer hangs until released
        return real_read(store, name)

    monkeypatch.setattr(RemoteStore, "read", read)
    prompt = [7, 7, 1, 2, 3]
    engine.start()
    try:
        result: dict = {}
        refresh = threading.Thread(target=lambda: result.update(new=engine.refresh_artifact(uri)))
        refresh.start()
        assert reading.wait(30)
        # the layer's download hangs: the engine still generates (at the depth it holds)
        assert generated(engine, prompt) == hf_greedy(trained, 1, prompt, 10)
        assert engine.max_depth == 1 and refresh.is_alive()
        release.set()
        refresh.join(60)
        assert result["new"] == [ORDER[1]] and engine.max_depth == 2

        art.append_layer(trained, ORDER[2], {"ppl_ratio": 1.0})
        down["now"] = True  # the store is unreachable: the refresh fails, nothing changes, serving goes on
        with pytest.raises(ArtifactUnavailable, match="EndpointConnectionError"):
            engine.refresh_artifact(uri)
        assert engine.max_depth == 2
        engine.set_depth(2, wait=True, timeout=60)
        assert generated(engine, prompt) == hf_greedy(trained, 2, prompt, 10)
        down["now"] = False  # back: the next refresh loads the layer
        assert engine.refresh_artifact(uri) == [ORDER[2]] and engine.max_depth == 3
    finally:
        release.set()
        engine.stop()
