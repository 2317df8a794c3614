"""The replica inference engine (no Ray here; the Ray Serve wrapper is `deployment.py`).

    from dsla_serve.replicas import Engine, SamplingParams
    engine = Engine("tiny:llama", max_model_len=512)
    out = engine.generate("Hello", SamplingParams(temperature=0, max_tokens=16))[0]
    print(out.outputs[0].text)
"""

from .engine import Engine
from .outputs import CompletionOutput, PromptTooLongError, QueueFullError, RequestMetrics, RequestOutput
from .planner import MemoryPlan
from .sampling import SamplingParams
from .stream import RequestStream

__all__ = ["Engine", "SamplingParams", "RequestOutput", "CompletionOutput", "RequestMetrics", "RequestStream",
           "QueueFullError", "PromptTooLongError", "MemoryPlan"]
