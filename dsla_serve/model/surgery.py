"""Model surgery: convert decoder layers of a Hugging Face causal LM to DSLA and choose the depth.

Each converted layer's attention module keeps its place and parameter names (`...self_attn.q_proj`),
gains a DSLA twin as a child (`...self_attn.dsla`, a `DSLAAttention` sharing q/k/v/o, or with another
`kind` one of its baseline subclasses from `baselines`), and has its `forward` routed: to the twin
while the twin is active, to the original code otherwise. Both stay
resident, so `set_depth` is a flag flip, depth 0 is exactly the original model, and the base model's
parameter names never change (which keeps the fingerprint and state dicts stable across depths).

The conversion order lives in the twins themselves (`order_position`), so it follows the model
through `copy.deepcopy`, `.to()` and the like with no separate bookkeeping.
"""

from __future__ import annotations

import types
from collections.abc import Iterable

from torch import nn

from .attention import DSLAAttention
from .baselines import layer_class, layer_kind
from .config import DSLAConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def _describe(model: nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return f"{type(model).__name__} (model_type {model_type!r})"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Llama/Mistral/Qwen2 causal LM (`model.model.layers`) or base model.

    Raises TypeError naming the architecture for anything else.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if model_type not in SUPPORTED_MODEL_TYPES or not isinstance(layers, nn.ModuleList):
        raise TypeError(f"cannot convert {_describe(model)}: DSLA conversion supports the Hugging Face "
                        f"architectures {', '.join(SUPPORTED_MODEL_TYPES)}")
    return layers


def dsla_layers(model: nn.Module) -> dict[int, DSLAAttention]:
    """Every converted layer, active or not: {decoder layer index: its DSLAAttention}."""
    out = {}
    for i, layer in enumerate(decoder_layers(model)):
        twin = getattr(layer.self_attn, "dsla", None)
        if isinstance(twin, DSLAAttention):
            out[i] = twin
    return out


def conversion_order(model: nn.Module) -> list[int]:
    """The converted layer indices in the order they were converted (depth d = the first d of them)."""
    twins = dsla_layers(model)
    return sorted(twins, key=lambda i: twins[i].order_position)


def get_depth(model: nn.Module) -> int:
    """How many layers of the conversion order currently run as DSLA."""
    return sum(twin.active for twin in dsla_layers(model).values())


def set_depth(model: nn.Module, depth: int) -> nn.Module:
    """Run the first `depth` layers of the conversion order as DSLA, all others as softmax attention.

    Caches filled at another depth must not be reused afterwards (their slots hold the other kind).
    """
    order = conversion_order(model)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= len(order):
        raise ValueError(f"depth must be an int in [0, {len(order)}] (the number of converted layers), "
                         f"got {depth!r}")
    twins = dsla_layers(model)
    for position, layer_idx in enumerate(order):
        twins[layer_idx].active = position < depth
    return model


def _routed_forward(self, *args, **kwargs):
    """`forward` of a converted attention module: its DSLA twin while active, else the original."""
    if self.dsla.active:
        return self.dsla(*args, **kwargs)
    return type(self).forward(self, *args, **kwargs)


def attach_twin(model: nn.Module, layer_idx: int, twin: DSLAAttention, order_position: int) -> None:
    """Install `twin` as the DSLA twin of decoder layer `layer_idx` (replacing a previous one).

    Low-level: `convert` and `Artifact.apply` use it after validating everything; it does not check
    that the order stays a permutation prefix.
    """
    attn = decoder_layers(model)[layer_idx].self_attn
    previous = getattr(attn, "dsla", None)
    twin.order_position = order_position
    twin.active = previous.active if isinstance(previous, DSLAAttention) else False
    attn.dsla = twin
    attn.forward = types.MethodType(_routed_forward, attn)


def convert(model: nn.Module, layers: Iterable[int], config: DSLAConfig | None = None, *,
            kind: str | None = None) -> nn.Module:
    """Convert decoder layers `layers` of a Llama/Mistral/Qwen2 causal LM to DSLA, in place.

    The layers are appended, in the given order, to the model's conversion order, and the depth is
    set to the whole order (every converted layer active). `config` defaults to the config of the
    layers already converted, else `DSLAConfig()`. `kind` picks the layer class (`baselines.layer_class`:
    "dsla", or the baselines "gla", "linear", "swa" with their default settings); it defaults to the
    kind of the layers already converted, else "dsla", and must match it (one model, one family).
    Everything is checked before the model is touched.

    Returns the model. Raises TypeError for other architectures, ValueError for an index out of
    range, repeated, or already converted, and for an unknown kind or one other than the model's.
    """
    blocks = decoder_layers(model)
    layers = list(layers)
    existing = dsla_layers(model)
    n = len(blocks)
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise ValueError(f"layer index {i!r} is out of range: the model has {n} decoder layers (0..{n - 1})")
        if i in existing:
            raise ValueError(f"layer {i} is already converted (conversion order {conversion_order(model)})")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layer indices repeat in {layers}")
    model_kinds = sorted({layer_kind(twin) for twin in existing.values()})
    kind = kind if kind is not None else (model_kinds[0] if model_kinds else "dsla")
    cls = layer_class(kind)
    if model_kinds and model_kinds != [kind]:
        raise ValueError(f"cannot convert layers as {kind!r}: the model's converted layers are {model_kinds}")
    if config is None:
        config = next(iter(existing.values())).config if existing else DSLAConfig()
    twins = [cls(blocks[i].self_attn, config) for i in layers]  # may raise: nothing attached yet
    start = len(existing)
    for k, (i, twin) in enumerate(zip(layers, twins)):
        attach_twin(model, i, twin, start + k)
    return set_depth(model, start + len(layers))
