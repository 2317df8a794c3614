"""A failing CUDA-graph capture: the engine falls back to eager decoding and says so in its stats, or
raises when graphs are required (what the GPU benchmark asks for, so a run without graphs fails)."""

from dsla_serve.replicas import Engine, SamplingParams

from .helpers import tiny_converted

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


class FailingGraphs:
    def run(self, rows):
        raise RuntimeError("operation not permitted when stream is capturing")

    def run_greedy(self, rows, steps):
        raise RuntimeError("operation not permitted when stream is capturing")


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
