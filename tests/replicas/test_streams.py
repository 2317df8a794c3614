"""Streaming outputs: sync iteration (driving the engine), async iteration (loop thread), abort."""

import asyncio

from dsla_serve.replicas import Engine, SamplingParams

from .helpers import tiny_converted, tokenizer


def _engine(**kw):
    return Engine(tiny_converted("llama", seed=2), tokenizer=tokenizer(), depth=2, max_model_len=64,
                  max_num_seqs=3, **kw)


def test_sync_stream_yields_each_token_without_a_loop_thread():
    engine = _engine()
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    outs = list(engine.add_request("Hi there", params))
    assert len(outs) == 8 and [o.finished for o in outs] == [False] * 7 + [True]
    assert [t for o in outs for t in o.outputs[0].new_token_ids] == outs[-1].outputs[0].token_ids
    assert "".join(o.outputs[0].new_text for o in outs) == outs[-1].outputs[0].text
    assert outs[-1].outputs[0].token_ids == engine.generate("Hi there", params, use_tqdm=False)[0].outputs[0].token_ids


def test_streamed_text_never_shows_part_of_a_stop_string():
    engine = _engine()
    free = engine.generate("abc", SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
                           use_tqdm=False)[0].outputs[0].text
    k = next(i for i in range(4, len(free) - 3) if "\ufffd" not in free[i:i + 3])
    stop = free[k:k + 3]
    outs = list(engine.add_request("abc", SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=stop)))
    final = outs[-1].outputs[0].text
    assert final == free[:free.index(stop)]
    streamed = ""
    for o in outs:  # what was shown is never taken back: no partial stop string was streamed
        streamed += o.outputs[0].new_text
        assert final.startswith(streamed)
    assert streamed == final


def test_async_streams_with_the_loop_thread():
    engine = _engine()
    engine.start()
    try:
        async def consume(prompt, n):
            tokens = []
            async for out in engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)):
                tokens += out.outputs[0].new_token_ids
            return tokens, out

        async def main():
            return await asyncio.gather(*(consume(p, n) for p, n in (("one", 5), ("two two", 9), ("3", 7), ("four", 4))))

        results = asyncio.run(main())
    finally:
        engine.stop()
    for (tokens, final), n in zip(results, (5, 9, 7, 4)):
        assert final.finished and len(tokens) == n and tokens == final.outputs[0].token_ids


def test_abort_ends_the_stream_and_frees_the_slot():
    engine = _engine()
    engine.start()
    try:
        stream = engine.add_request("x", SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
        first = next(stream)
        assert not first.finished
        stream.abort()
        final = stream.result()
        waiting = engine.add_request("y", SamplingParams(max_tokens=3))
        engine.abort(waiting.request_id)
        waiting.result()
    finally:
        engine.stop()
    assert final.finished and final.outputs[0].finish_reason == "abort" and len(final.outputs[0].token_ids) < 50
    assert engine.pool.num_free == 3 and engine.stats().aborted >= 1


def test_stop_aborts_what_is_left():
    engine = _engine()
    engine.start()
    stream = engine.add_request("z", SamplingParams(temperature=0, max_tokens=60, ignore_eos=True))
    next(stream)
    engine.stop()
    assert stream.result().outputs[0].finish_reason == "abort"
    assert not engine.has_unfinished()


def test_a_request_aborted_before_its_first_step_never_runs():
    engine = _engine()
    queued = engine.add_request("x", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    engine.abort(queued.request_id)
    outputs = list(queued)  # drives the engine (no loop thread)
    final = outputs[-1]
    assert [o.finished for o in outputs] == [True]  # one final output, nothing streamed before it
    assert final.outputs[0].finish_reason == "abort" and final.outputs[0].token_ids == []
    assert engine.pool.num_free == engine.pool.num_slots and not engine.has_unfinished()


def test_a_running_request_aborted_between_steps_gets_no_more_tokens():
    engine = _engine()
    stream = engine.add_request("x", SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    first = next(stream)
    produced = len(first.outputs[0].token_ids)
    engine.abort(stream.request_id)
    final = list(stream)[-1]
    assert final.outputs[0].finish_reason == "abort" and len(final.outputs[0].token_ids) == produced


def test_async_stream_without_a_loop_thread_registers_no_waiters_while_it_drives():
    engine = _engine(prefill_chunk_tokens=4)  # a 40-token prompt: 10 steps with no output
    stream = engine.add_request("x" * 40, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    waiting_while_driving = []
    drive = stream._drive

    def observed_drive():
        waiting_while_driving.append(len(stream._waiters))
        return drive()

    stream._drive = observed_drive

    async def consume():
        return [out async for out in stream]

    outs = asyncio.run(consume())
    assert len(outs) == 3 and outs[-1].finished
    assert max(waiting_while_driving) == 0  # nobody waits on a future while this consumer steps inline


def test_a_command_left_by_a_loop_that_stopped_runs_on_the_caller():
    import threading

    class LoopThatDiesAfterTheCheck:  # alive when _between_steps looks, gone before it takes commands
        def __init__(self):
            self.calls = 0

        def is_alive(self):
            self.calls += 1
            return self.calls == 1

    engine = _engine()
    engine._thread = LoopThatDiesAfterTheCheck()
    result = {}
    caller = threading.Thread(target=lambda: result.update(value=engine._between_steps(lambda: 42)), daemon=True)
    caller.start()
    caller.join(timeout=10)
    assert not caller.is_alive() and result == {"value": 42} and not engine._commands
