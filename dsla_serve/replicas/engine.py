"""`Engine`: continuous-batching inference over a hybrid (softmax + DSLA) model, at a chosen depth.

    engine = Engine("tiny:llama", max_model_len=256)
    outs = engine.generate(["Hello", "Tell me"], SamplingParams(temperature=0, max_tokens=20))
    print(outs[0].outputs[0].text)

    stream = engine.add_request("Hi", SamplingParams(max_tokens=50))  # serving: engine.start() first
    for out in stream: print(out.outputs[0].new_text, end="")

No Ray here (the Ray Serve wrapper is `deployment.py`). One thread steps the engine: the caller
(`step()`, `generate()`, iterating a stream) or the loop thread of `start()`. Other threads only
put requests, aborts and commands into an inbox that the stepping thread drains between steps.
See docs/engine.md for the design (cache layout, scheduling, depth changes).
"""

from __future__ import annotations

import gc
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence

import torch

from ..model import set_depth as set_model_depth
from ..model.storage import location_key
from .batch import ForwardBatch
from .cache import CachePool
from .decode_inputs import DecodeInputs, greedy_steps
from .messages import EngineStats
from .metrics import EngineMetrics
from .model_source import (active_dsla_layers, cache_spec, context_limit, eos_token_ids, load_model,
                           max_converted_depth, open_artifact)
from .outputs import DepthUnavailableError, PromptTooLongError, QueueFullError, RequestOutput, failed_output
from .planner import MemoryPlan, activation_reserve_bytes, default_budget, plan_memory
from .request import Request
from .runner import ModelRunner
from .sampler import prompt_logprobs, sample
from .sampling import SamplingParams
from .scheduler import ScheduledStep, Scheduler
from .stream import RequestStream

log = logging.getLogger(__name__)

DEFAULT_GRAPH_DECODE_STEPS = 4
# Greedy multi-step passes only for small batches: there the host's share of a step is largest, and a
# request arriving meanwhile waits for a pass of short steps.
MULTI_STEP_MAX_BATCH = 8

Prompt = str | Sequence[int]


class Engine:
    """A replica's inference engine: one model, an optional artifact, a current depth.

    Args:
        model: a local model directory, a hub id, `tiny:<arch>` (a small random model, no download),
            or an in-memory Hugging Face Llama/Mistral/Qwen2 causal LM (converted or not).
        tokenizer: overrides the loaded tokenizer; without one, prompts must be token ids and outputs
            carry no text.
        artifact: a DSLA artifact directory (or `Artifact`) whose published layers are loaded.
        depth: how many layers of the conversion order run as DSLA.
        dtype / device: for a loaded model (default: its own dtype, CUDA when available); an in-memory
            model is cast / moved only when they are given.
        max_num_seqs: cap on concurrent sequences (the memory plan may allow fewer).
        max_model_len: context limit per sequence, prompt plus generated (default: the model's).
        memory_budget_bytes: bytes for the cache; default this process's share, `gpu_memory_fraction` of
            the GPU, minus what this process already holds (its weights) and an activation reserve
            (2 GiB on the CPU). See `planner.py`.
        max_queue: requests that may wait for a slot; beyond it `add_request` raises QueueFullError.
        prefill_chunk_tokens: most prompt tokens processed per step (chunked prefill).
        use_cuda_graphs: capture the decode step in CUDA graphs (CUDA only). If a capture fails the
            engine decodes without graphs from then on, logs the error and reports it in `stats()`
            (`cuda_graphs`), unless `require_cuda_graphs`, when the step raises instead.
        seed: seeds the generators of requests that bring no seed of their own.
        decode_steps: greedy decode steps run back to back in one pass (one launch, one host round trip;
            `decode_inputs.greedy_steps`) when every running sequence decodes greedily without
            logprobs, at most `MULTI_STEP_MAX_BATCH` run, none waits for a slot and each has at least
            that many tokens left; tokens then arrive that many at a time, and a token after a stop is
            computed and dropped. Default (None): 4 with CUDA graphs, 1 (every step alone) otherwise.
    """

    def __init__(self, model, *, tokenizer=None, artifact=None, depth: int = 0, dtype=None, device=None,
                 max_num_seqs: int = 256, max_model_len: int | None = None,
                 memory_budget_bytes: int | None = None, gpu_memory_fraction: float = 0.9,
                 max_queue: int = 1024, prefill_chunk_tokens: int = 2048, use_cuda_graphs: bool = True,
                 require_cuda_graphs: bool = False, seed: int = 0, decode_steps: int | None = None):
        for name, value, low in (("max_num_seqs", max_num_seqs, 1), ("max_queue", max_queue, 0),
                                 ("prefill_chunk_tokens", prefill_chunk_tokens, 1),
                                 ("decode_steps", 1 if decode_steps is None else decode_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not 0 < gpu_memory_fraction <= 1:
            raise ValueError(f"gpu_memory_fraction must be in (0, 1], got {gpu_memory_fraction!r}")
        if memory_budget_bytes is not None and memory_budget_bytes <= 0:
            raise ValueError(f"memory_budget_bytes must be > 0, got {memory_budget_bytes!r}")

        self.model, self.tokenizer = load_model(model, tokenizer, dtype, device)
        self.device = next(self.model.parameters()).device
        self.artifact = open_artifact(artifact)
        if self.artifact is not None:
            self.artifact.apply(self.model)
        self.max_model_len = context_limit(self.model, max_model_len)
        self.max_num_seqs = max_num_seqs
        self.vocab_size = self.model.config.vocab_size
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.use_cuda_graphs = use_cuda_graphs and self.device.type == "cuda"
        self.require_cuda_graphs = require_cuda_graphs
        self.decode_steps = decode_steps if decode_steps is not None else (
            DEFAULT_GRAPH_DECODE_STEPS if self.use_cuda_graphs else 1)
        self.cuda_graph_error: str | None = None  # why graphs were given up, if they were
        self._seeds = random.Random(seed)
        self.metrics = EngineMetrics()
        self.scheduler = Scheduler(max_queue, prefill_chunk_tokens)
        self._budget = memory_budget_bytes if memory_budget_bytes is not None else default_budget(
            self.device, gpu_memory_fraction,
            activation_reserve_bytes(self.model.config, prefill_chunk_tokens, max_num_seqs))

        self._inbox_lock = threading.Lock()
        self._config_lock = threading.Lock()  # stats() (other threads) never sees a half-built cache
        self._inbox: deque[Request] = deque()
        self._aborts: set[str] = set()
        self._commands: deque[tuple[Callable, dict]] = deque()
        self._streams: dict[str, RequestStream] = {}
        self._live: dict[str, Request] = {}
        self._pending_depth: int | None = None
        self._step_lock = threading.RLock()
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        self.depth = -1
        self.pool: CachePool | None = None
        self._configure(self._check_depth(depth))

    # ----------------------------------------------------------------------------------------------
    # configuration: depth, cache plan, runner
    # ----------------------------------------------------------------------------------------------
    @property
    def max_depth(self) -> int:
        """The deepest depth available (converted / published layers)."""
        return max_converted_depth(self.model)

    def _check_depth(self, depth: int) -> int:
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= self.max_depth:
            raise ValueError(f"depth must be an int in [0, {self.max_depth}] (the converted layers available), "
                             f"got {depth!r}")
        return depth

    def _configure(self, depth: int) -> None:
        """Switch the model to `depth` and (re)build the cache and the runner. Nothing may be running."""
        with self._config_lock:
            spec = cache_spec(self.model, depth, self.max_model_len)
            plan = plan_memory(spec, depth, self._budget, self.max_num_seqs)
            self.runner = self.graphs = None
            self.pool = None
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            set_model_depth(self.model, depth)
            self.depth = depth
            self.plan: MemoryPlan = plan
            self.pool = CachePool(spec, plan.max_seqs, self.device)
            self._build_runner()
            log.info("engine configured: %s", plan.describe())

    def _build_runner(self) -> None:
        self.runner = ModelRunner(self.model, self.pool, active_dsla_layers(self.model, self.depth))
        self.graphs = None
        if self.use_cuda_graphs:
            from .cuda_graphs import DecodeGraphs
            self.cuda_graph_error = None
            self.graphs = DecodeGraphs(self.runner, self.pool.num_slots)

    def set_depth(self, depth: int, wait: bool = False, timeout: float | None = None) -> None:
        """Serve at `depth` from now on, dropping no request (drain, see docs/engine.md).

        Admissions pause; requests already running finish at the old depth; then the model switches,
        the cache is re-planned, and the waiting requests are admitted at the new depth. Returns at
        once unless `wait` (then it blocks until the switch, driving the engine if no loop runs).
        """
        self._check_depth(depth)
        plan_memory(cache_spec(self.model, depth, self.max_model_len), depth, self._budget,
                    self.max_num_seqs)  # raises now, not later on the loop thread, if depth cannot fit
        with self._inbox_lock:
            self._pending_depth = depth
        self._wakeup.set()
        if not self.running_loop:
            with self._step_lock:
                self._maybe_switch_depth()
                while wait and self.depth != depth:
                    self.step()
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while wait and self.depth != depth:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"depth {depth} not reached within {timeout} s (still draining)")
            time.sleep(0.005)

    def _maybe_switch_depth(self) -> list[Request]:
        """Switch to the pending depth once nothing runs; returns the waiting requests that had to run at
        the old depth (`add_request(depth=...)`), failed rather than served at another depth."""
        target = self._pending_depth
        if target is None:
            return []
        if target == self.depth:
            self._pending_depth = None
        elif not self.scheduler.running:
            self._configure(target)
            with self._inbox_lock:
                if self._pending_depth == target:
                    self._pending_depth = None
            return self._fail_pinned_elsewhere()
        return []

    def _fail_pinned_elsewhere(self) -> list[Request]:
        failed = [r for r in self.scheduler.waiting if r.depth not in (None, self.depth)]
        for req in failed:
            self.scheduler.remove(req, self.pool)
            req.finish("error", f"depth {req.depth} is no longer served by this engine (now at depth {self.depth})")
        return failed

    @property
    def draining(self) -> bool:
        return self._pending_depth is not None and self._pending_depth != self.depth

    def refresh_artifact(self, path=None) -> list[int]:
        """Load the artifact's layers published since the last read; returns their indices.

        With `path` (a directory, a URI or an `Artifact`) on an engine built without an artifact, it opens
        that artifact and loads all its published layers: a replica started before the trainer created its
        artifact attaches it in place, with no second engine. With `path` on an engine that already reads
        an artifact, `path` must be that same artifact. The manifest is read, and new layers of an object
        store downloaded into the node-local cache, in the calling thread; only loading them into the model
        runs between steps (no restart, nothing dropped), so a slow or unreachable store never stalls
        generation. The current depth is kept and the new layers make deeper depths available to
        `set_depth`. Raises ValueError without an artifact or `path`, or for a different artifact,
        ArtifactError (the model untouched) when the artifact does not fit the model, and
        ArtifactUnavailable when its store cannot be reached (nothing changes; call again later).
        """
        if path is not None and self.artifact is None:
            artifact = open_artifact(path)
            artifact.fetch()
            return self._between_steps(lambda: self._attach_artifact_now(artifact))
        if self.artifact is None:
            raise ValueError("this engine was built without an artifact: nothing to refresh (pass the artifact's "
                             "path to attach one)")
        if path is not None and _artifact_dir(path) != _artifact_dir(self.artifact):
            raise ValueError(f"this engine reads the artifact {self.artifact.path}; it cannot switch to {path}")
        self.artifact.reload()
        if self.artifact.depth <= self.max_depth:
            return []
        self.artifact.fetch()
        return self._between_steps(self._load_published_now)

    def _attach_artifact_now(self, artifact) -> list[int]:
        if self.artifact is not None:  # another caller attached it first
            return self._load_published_now()
        self._load_artifact_layers(artifact)
        self.artifact = artifact
        return [entry.layer for entry in artifact.entries]

    def _load_published_now(self) -> list[int]:
        """Load the published layers the model lacks (the manifest as last read); returns them."""
        before = self.max_depth
        if self.artifact.depth > before:
            self._load_artifact_layers(self.artifact)
        return [entry.layer for entry in self.artifact.entries[before:self.max_depth]]

    def _load_artifact_layers(self, artifact) -> None:
        """Load every published layer of `artifact` into the model (checked first, the model untouched on
        error), keeping the current depth, and rebuild the runner (the twins are new modules)."""
        artifact.apply(self.model)  # also sets the deepest depth: set ours back
        set_model_depth(self.model, self.depth)
        self._build_runner()

    def _between_steps(self, fn: Callable):
        """Run fn on the stepping thread between two steps and return its result."""
        if not self.running_loop:
            with self._step_lock:
                return fn()
        box: dict = {"done": threading.Event()}
        with self._inbox_lock:
            self._commands.append((fn, box))
        self._wakeup.set()
        while not box["done"].wait(timeout=0.5):
            if not self.running_loop:  # the loop stopped before taking the command: run it here
                with self._inbox_lock:
                    orphaned = (fn, box) in self._commands
                    if orphaned:
                        self._commands.remove((fn, box))
                if orphaned:
                    with self._step_lock:
                        return fn()
        if "error" in box:
            raise box["error"]
        return box["result"]

    # ----------------------------------------------------------------------------------------------
    # requests
    # ----------------------------------------------------------------------------------------------
    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None,
                    *, keep_history: bool = True, depth: int | None = None) -> RequestStream:
        """Queue a request; returns its output stream.

        Raises ValueError (PromptTooLongError for an over-long prompt) naming what is wrong, and
        QueueFullError when `max_queue` requests already wait. `keep_history=False` keeps only the
        final output in the stream (what `generate` uses). `depth`: run it at exactly this depth:
        DepthUnavailableError when the engine is at another one or draining, and should the engine
        change depth before the request starts, it ends with finish_reason "error" instead of running
        at the new depth.
        """
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        text, ids = self._tokenize(prompt)
        max_new = self._max_new_tokens(len(ids), params)
        if params.stop_strings and self.tokenizer is None:
            raise ValueError("SamplingParams.stop needs a tokenizer (this engine has none): use stop_token_ids")
        request_id = request_id if request_id is not None else uuid.uuid4().hex
        generator = torch.Generator().manual_seed(params.seed if params.seed is not None
                                                  else self._seeds.getrandbits(63))
        req = Request(request_id, text, ids, params, max_new, self.eos_ids, self.tokenizer, generator, depth)
        stream = RequestStream(request_id, drive=self._drive, abort=self.abort, keep_history=keep_history)
        with self._inbox_lock:
            if depth is not None and (depth != self.depth or self._pending_depth not in (None, self.depth)):
                raise DepthUnavailableError(f"this engine serves depth {self.depth}"
                                            + (" and is draining" if self.draining else "") + f", not {depth}")
            if request_id in self._live:
                raise ValueError(f"request_id {request_id!r} is already in use by a live request")
            if len(self.scheduler.waiting) + len(self._inbox) >= self.scheduler.max_queue:
                raise QueueFullError(f"the waiting queue is full ({self.scheduler.max_queue} requests, max_queue); "
                                     f"retry later")
            self._live[request_id] = req
            self._streams[request_id] = stream
            self._inbox.append(req)
        self.metrics.on_arrival()
        self._wakeup.set()
        return stream

    def check_token_ids(self, ids: Sequence[int], what: str = "token ids") -> list[int]:
        """`ids` as a list; ValueError naming `what` when one is outside the model's vocabulary."""
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"{what} must be in [0, {self.vocab_size}), got {bad[:5]}")
        return list(ids)

    def _tokenize(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt is a string but the engine has no tokenizer: pass token ids")
            ids = list(self.tokenizer(prompt)["input_ids"])
            text = prompt
        elif isinstance(prompt, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids, text = self.check_token_ids(prompt, "prompt token ids"), None
        else:
            raise TypeError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise ValueError("prompt is empty (no tokens)")
        return text, ids

    def _max_new_tokens(self, prompt_len: int, params: SamplingParams) -> int:
        limit = self.max_model_len
        if params.max_tokens is None:
            if prompt_len >= limit:
                raise PromptTooLongError(f"prompt has {prompt_len} tokens, which leaves no room to generate within "
                                         f"max_model_len={limit}")
            return limit - prompt_len
        if prompt_len + params.max_tokens > limit:
            raise PromptTooLongError(f"prompt ({prompt_len} tokens) + max_tokens ({params.max_tokens}) = "
                                     f"{prompt_len + params.max_tokens} exceeds max_model_len={limit}")
        return params.max_tokens

    def abort(self, request_id: str) -> None:
        """Cancel a request (waiting or running); its stream ends with finish_reason "abort"."""
        with self._inbox_lock:
            self._aborts.add(request_id)
        self._wakeup.set()

    def generate(self, prompts: Prompt | Sequence[Prompt], sampling_params=None, *,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Run prompts to completion; one RequestOutput per prompt, in order.

        `prompts`: a string, a list of token ids, or a list of either. `sampling_params`: one
        SamplingParams for all, or a list (one per prompt). A prompt that cannot run (too long,
        bad token ids) gets an output with finish_reason "error" and `.error`; the others are
        unaffected. Works with or without the loop thread.
        """
        prompts = _prompt_list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"sampling_params has {len(params)} entries for {len(prompts)} prompts")
        from tqdm.auto import tqdm

        results: list[RequestOutput | None] = [None] * len(prompts)
        pending = deque(range(len(prompts)))
        streams: dict[int, RequestStream] = {}
        with tqdm(total=len(prompts), desc="generate", unit="req", disable=not use_tqdm) as bar:
            while pending or streams:
                while pending:
                    i = pending[0]
                    try:
                        streams[i] = self.add_request(prompts[i], params[i], keep_history=False)
                    except QueueFullError:
                        break
                    except (ValueError, TypeError) as e:
                        results[i] = failed_output(prompts[i], e)
                        bar.update(1)
                    pending.popleft()
                if not self._drive():
                    time.sleep(0.002)
                for i in [i for i, s in streams.items() if s.finished]:
                    results[i] = streams.pop(i).result()
                    bar.update(1)
        return results  # type: ignore[return-value]

    def warm_up(self) -> float:
        """Before serving: run what the first requests would otherwise wait for (on a GPU, compiling the
        kernels): one short prompt alone, then prompts of different lengths packed into one prefill step
        (several segments are their own compiled kernel variant), each with a few decode steps (a greedy
        pass of `decode_steps` and a single step: both graphs captured where the context allows), at the
        depth served. The latency figures start afresh afterwards. Returns the seconds it took."""
        started = time.perf_counter()
        new_tokens = self.decode_steps + 2
        n = max(1, min(16, self.max_model_len - new_tokens - 1))
        prompt = [t % self.vocab_size for t in range(1, n + 1)]
        params = SamplingParams(temperature=0.0, max_tokens=max(1, min(new_tokens, self.max_model_len - n - 1)),
                                ignore_eos=True)
        self.generate([prompt], params, use_tqdm=False)
        if self.max_num_seqs > 1:
            self.generate([prompt, prompt[: max(1, n // 2)]], params, use_tqdm=False)
        self.metrics = EngineMetrics()
        return time.perf_counter() - started

    # ----------------------------------------------------------------------------------------------
    # stepping
    # ----------------------------------------------------------------------------------------------
    def has_unfinished(self) -> bool:
        with self._inbox_lock:
            queued = bool(self._inbox or self._aborts or self._commands)
        return queued or bool(self.scheduler.waiting or self.scheduler.running) or self.draining

    def _drive(self) -> bool:
        """Step once if no loop thread runs and there is work; says whether it stepped."""
        if self.running_loop:
            return False
        with self._step_lock:
            if not self.has_unfinished():
                return False
            self.step()
            return True

    def step(self) -> list[RequestOutput]:
        """One engine iteration: take in requests/aborts/commands, maybe switch depth, admit, run one
        forward pass of prefill chunks + decodes, sample, and publish outputs. Returns the outputs
        produced (requests that advanced or finished)."""
        if self.running_loop and threading.current_thread() is not self._thread:
            raise RuntimeError("the engine's loop thread is running: do not call step() yourself")
        with self._step_lock:
            changed: list[Request] = []
            self._take_inbox(changed)
            changed += self._maybe_switch_depth()
            for req in self.scheduler.admit(self.pool, hold=self.draining):
                req.metrics.first_scheduled_time = time.monotonic()
            work = self.scheduler.schedule()
            if not work.empty:
                try:
                    changed += self._execute(work)
                except Exception as e:  # noqa: BLE001 - fail this step's requests, keep serving
                    log.exception("engine step failed; failing its %d requests", len(work.requests()))
                    for req in work.requests():
                        if not req.finished:
                            req.finish("error", f"{type(e).__name__}: {e}")
                            changed.append(req)
            return self._publish(changed)

    def _take_inbox(self, changed: list[Request]) -> None:
        with self._inbox_lock:
            new, self._inbox = list(self._inbox), deque()
            aborts, self._aborts = self._aborts, set()
            commands, self._commands = list(self._commands), deque()
        for req in new:
            self.scheduler.waiting.append(req)  # capacity was checked in add_request
        for request_id in aborts:
            req = self._live.get(request_id)
            if req is not None and not req.finished:
                req.finish("abort")
                # out of the queue / running set now, so this step neither admits nor runs it
                self.scheduler.remove(req, self.pool)
                changed.append(req)
        for fn, box in commands:
            try:
                box["result"] = fn()
            except Exception as e:  # noqa: BLE001 - handed back to the caller
                box["error"] = e
            box["done"].set()

    def _captured(self, batch_size: int, steps: int):
        """The decode graphs, with the one for `batch_size` rows and `steps` captured; None without graphs.
        A capture failure costs speed, not correctness: it is logged, the engine decodes eagerly from then
        on (stats say why), unless graphs are required. A failing replay is not caught here: it may have
        advanced the DSLA states, so it fails the step's requests instead of running the step again."""
        if self.graphs is None:
            return None
        try:
            self.graphs.graph(batch_size, steps)
        except Exception as e:  # noqa: BLE001
            if self.require_cuda_graphs:
                raise
            log.exception("CUDA graph capture failed; decoding without graphs from now on")
            self.cuda_graph_error = f"{type(e).__name__}: {e}"[:500]
            self.graphs = None
        return self.graphs

    def _greedy_run(self, work: ScheduledStep) -> int:
        """How many greedy decode steps `work` may run in one pass (`decode_steps`' conditions), else 1."""
        k = self.decode_steps
        if k < 2 or work.prefills or not work.decodes or len(work.decodes) > MULTI_STEP_MAX_BATCH \
                or self.scheduler.waiting:
            return 1
        for req in work.decodes:
            if not req.params.greedy or req.params.logprobs is not None \
                    or req.max_new_tokens - len(req.output_ids) < k or req.num_computed + k > self.max_model_len:
                return 1
        return k

    def _decode_greedy(self, reqs: list[Request], steps: int) -> list[Request]:
        """`steps` greedy decode steps of `reqs` in one pass; a request's tokens after its stop are dropped."""
        rows = [(req.slot, req.num_computed, req.output_ids[-1]) for req in reqs]
        graphs = self._captured(len(rows), steps)
        if graphs is not None:
            tokens = graphs.run_greedy(rows, steps)
        else:
            inputs = DecodeInputs(len(rows), self.device)
            inputs.fill(rows)
            tokens = greedy_steps(self.runner, inputs, steps, max(p for _, p, _ in rows) + steps).tolist()
        count = 0
        for i, req in enumerate(reqs):
            for j in range(steps):
                req.num_computed += 1
                req.append_token(tokens[j][i], None)
                count += 1
                if req.finished:
                    break
        self.metrics.on_tokens(count)
        return list(reqs)

    def _execute(self, work: ScheduledStep) -> list[Request]:
        """Run the forward pass of a scheduled step and apply its results."""
        steps = self._greedy_run(work)
        if steps > 1:
            return self._decode_greedy(work.decodes, steps)
        prefill, decode, logit_rows = [], [], []
        row = 0
        for req, n in work.prefills:
            start = req.num_computed
            prefill.append((req.slot, start, req.prompt_ids[start:start + n]))
            if req.params.prompt_logprobs is not None:
                logit_rows += range(row, row + n)
            elif start + n == req.prompt_len:
                logit_rows.append(row + n - 1)
            row += n
        for req in work.decodes:
            decode.append((req.slot, req.num_computed, req.output_ids[-1]))
        logit_rows += range(row, row + len(decode))

        graphs = self._captured(len(decode), 0) if not prefill else None
        if graphs is not None:
            logits = graphs.run(decode)
        else:
            batch = ForwardBatch.build(prefill, decode, logit_rows, self.device)
            logits = self.runner.forward(batch)

        to_sample: list[tuple[Request, int]] = []  # (request, row of logits)
        changed: list[Request] = []
        r = 0
        for req, n in work.prefills:
            start = req.num_computed
            done = start + n == req.prompt_len
            if req.params.prompt_logprobs is not None:
                scored = n - 1 if done else n  # the last prompt position predicts a generated token
                if scored:
                    targets = torch.tensor(req.prompt_ids[start + 1:start + 1 + scored])
                    req.prompt_logprobs += prompt_logprobs(logits[r:r + scored], targets,
                                                           req.params.prompt_logprobs)
                r += n
                last = r - 1
            else:
                last = r
                r += 1 if done else 0
            req.num_computed += n
            if done:
                if req.max_new_tokens == 0:
                    req.finish("length")
                    changed.append(req)
                else:
                    to_sample.append((req, last))
        for req in work.decodes:
            req.num_computed += 1
            to_sample.append((req, r))
            r += 1
        if to_sample:
            rows = [i for _, i in to_sample]
            if rows != list(range(logits.shape[0])):  # (a decode step samples every row, in order)
                logits = logits.index_select(0, torch.tensor(rows, device=logits.device))
            tokens, logprobs = sample(logits, [q.params for q, _ in to_sample], [q.generator for q, _ in to_sample])
            for (req, _), token, lp in zip(to_sample, tokens, logprobs):
                req.append_token(token, lp)
                changed.append(req)
            self.metrics.on_tokens(len(tokens))
        return changed

    def _publish(self, changed: list[Request]) -> list[RequestOutput]:
        """Free finished requests' slots and put outputs into their streams."""
        outputs = []
        seen = set()
        for req in changed:
            if req.request_id in seen:
                continue
            seen.add(req.request_id)
            stream = self._streams.get(req.request_id)
            if req.finished:
                self.scheduler.remove(req, self.pool)
                self.metrics.on_finished(req)
                with self._inbox_lock:
                    self._live.pop(req.request_id, None)
                    self._streams.pop(req.request_id, None)
            elif stream is not None and not stream.keep_history:
                continue  # generate() only wants the final output
            out = req.snapshot()
            outputs.append(out)
            if stream is not None:
                stream.put(out)
        return outputs

    # ----------------------------------------------------------------------------------------------
    # loop thread (serving)
    # ----------------------------------------------------------------------------------------------
    @property
    def running_loop(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Step in a background thread until `stop()` (for servers: streams are fed as tokens come)."""
        if self.running_loop:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="dsla-engine-loop", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.has_unfinished():
                try:
                    self.step()
                except Exception:  # noqa: BLE001 - step() fails requests itself; this is a last resort
                    log.exception("engine loop: step failed")
                    time.sleep(0.1)
            else:
                self._wakeup.wait(0.05)
                self._wakeup.clear()

    def stop(self, abort: bool = True) -> None:
        """Stop the loop thread; with `abort`, end every unfinished request with "abort"."""
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join()
        self._thread = None
        if abort:
            with self._inbox_lock:
                self._aborts.update(self._live)
            with self._step_lock:
                self.step()

    # ----------------------------------------------------------------------------------------------
    # introspection
    # ----------------------------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        """Load and latency figures for routing and autoscaling (what a replica reports)."""
        with self._config_lock:
            return self._stats_locked()

    def _stats_locked(self) -> EngineStats:
        pool = self.pool
        with self._inbox_lock:
            waiting = len(self.scheduler.waiting) + len(self._inbox)
        cached = self.scheduler.cached_tokens()
        return EngineStats(
            depth=self.depth, pending_depth=self._pending_depth if self.draining else None, draining=self.draining,
            max_depth=self.max_depth, running=len(self.scheduler.running), waiting=waiting,
            queue_cap=self.scheduler.max_queue, max_num_seqs=pool.num_slots, max_model_len=self.max_model_len,
            cache_usage=pool.num_used / pool.num_slots,
            cache_token_usage=cached / (pool.num_slots * self.max_model_len),
            cuda_graphs=("on" if self.graphs is not None else
                         f"failed: {self.cuda_graph_error}" if self.cuda_graph_error else "off"),
            **self.metrics.snapshot())


def _artifact_dir(artifact) -> str:
    """One name per artifact location, given as a path, a URI or an `Artifact`."""
    return location_key(getattr(artifact, "path", artifact))


def _prompt_list(prompts) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Sequence) and prompts and all(isinstance(t, int) and not isinstance(t, bool)
                                                          for t in prompts):
        return [prompts]
    return list(prompts)
