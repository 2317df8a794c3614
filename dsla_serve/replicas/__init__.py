"""The replica inference engine (no Ray here; the Ray Serve wrapper is `deployment.py`).

    from dsla_serve.replicas import Engine, SamplingParams
    engine = Engine("tiny:llama", max_model_len=512)
    out = engine.generate("Hello", SamplingParams(temperature=0, max_tokens=16))[0]
    print(out.outputs[0].text)

The names below load their modules on first use, so the torch-free modules (`messages`, `sampling`)
import without torch: the policy actor reads replica messages without loading it.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "engine": ("Engine",),
    "outputs": ("CompletionOutput", "DepthUnavailableError", "PromptTooLongError", "QueueFullError", "RequestMetrics",
                "RequestOutput"),
    "planner": ("MemoryPlan",),
    "sampling": ("SamplingParams",),
    "stream": ("RequestStream",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
