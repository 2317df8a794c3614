"""The replica inference engine (no Ray here; the Ray Serve wrapper is `deployment.py`).

    from dsla_serve.replicas import Engine, SamplingParams
    engine = Engine("tiny:llama", max_model_len=512)
    out = engine.generate("Hello", SamplingParams(temperature=0, max_tokens=16))[0]
    print(out.outputs[0].text)

The names below load their modules on first use, so the torch-free modules (`messages`, `sampling`)
import without torch: the policy actor reads replica messages without loading it.
"""

from importlib import import_module

_EXPORTS = {
    "engine": ("Engine",),
    "outputs": ("CompletionOutput", "DepthUnavailableError", "PromptTooLongError", "QueueFullError", "RequestMetrics",
                "RequestOutput"),
    "planner": ("MemoryPlan",),
    "sampling": ("SamplingParams",),
    "stream": ("RequestStream",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
