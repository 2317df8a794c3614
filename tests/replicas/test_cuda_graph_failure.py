"""A failing CUDA-graph capture: the engine falls back to eager decoding and says so in its stats, or
raises when graphs are required (what the GPU benchmark asks for, so a run without graphs fails)."""

from dsla_serve.replicas import Engine, SamplingParams

from .helpers import tiny_converted

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


class FailingGraphs:
    """Fails where `DecodeGraphs` captures; replaying is never reached."""

    def graph(self, batch_size, steps):
        raise RuntimeError("operation not permitted when stream is capturing")


class FailingReplay(FailingGraphs):
    """Captures, then fails at the replay (which may already have advanced the DSLA states)."""

    def graph(self, batch_size, steps):
        return None

    def run(self, rows):
        raise RuntimeError("an illegal memory access was encountered")

    run_greedy = lambda self, rows, steps: self.run(rows)  # noqa: E731


def test_capture_failure_falls_back_and_is_reported():
    engine = Engine(tiny_converted("llama"), depth=2, max_model_len=32, max_num_seqs=2)
    assert engine.stats().cuda_graphs == "off"  # CPU: no graphs
    want = engine.generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    engine.graphs = FailingGraphs()  # what the CUDA path holds, failing at its first capture
    got = engine.generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    assert got == want and engine.graphs is None
    assert engine.stats().cuda_graphs.startswith("failed: RuntimeError: operation not permitted")


def test_required_graphs_make_a_capture_failure_an_error():
    engine = Engine(tiny_converted("llama"), depth=2, max_model_len=32, max_num_seqs=2, require_cuda_graphs=True)
    engine.graphs = FailingGraphs()
    out = engine.generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0]  # prefill runs, the first decode step fails
    assert out.outputs[0].finish_reason == "error" and "operation not permitted" in out.error


def test_a_failing_capture_of_a_greedy_pass_falls_back_to_eager_passes():
    engine = Engine(tiny_converted("llama"), depth=2, max_model_len=32, max_num_seqs=2, decode_steps=4)
    params = SamplingParams(temperature=0, max_tokens=9, ignore_eos=True)
    want = engine.generate([[1, 2, 3]], params, use_tqdm=False)[0].outputs[0].token_ids
    engine.graphs = FailingGraphs()
    got = engine.generate([[1, 2, 3]], params, use_tqdm=False)[0].outputs[0].token_ids
    assert got == want and len(got) == 9 and engine.graphs is None
    assert engine.stats().cuda_graphs.startswith("failed: RuntimeError")


def test_a_failing_replay_fails_the_step_instead_of_running_it_again():
    engine = Engine(tiny_converted("llama"), depth=2, max_model_len=32, max_num_seqs=2, decode_steps=4)
    engine.graphs = FailingReplay()
    out = engine.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=9, ignore_eos=True),
                          use_tqdm=False)[0]
    assert out.outputs[0].finish_reason == "error" and "illegal memory access" in out.error
    assert engine.graphs is not None and engine.stats().cuda_graphs == "on"  # not taken for a capture failure
