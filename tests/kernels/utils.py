"""Shared helpers for the DSLA kernel tests: error metric, input factory, NaN-poisoned allocation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dsla_serve.kernels import naive_dsla

# Relative-RMS tolerances of an implementation in a given dtype against the float64 reference.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5}


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """rms(actual - expected) / rms(expected) in float64 (plain rms of the difference if expected is 0).

    NaN or inf anywhere in `actual` gives NaN or inf, so `rel_rms(...) <= tol` fails for it.
    """
    a, e = actual.detach().double(), expected.detach().double()
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: {tuple(a.shape)} vs expected {tuple(e.shape)}")
    diff = (a - e).pow(2).mean().sqrt()
    ref = e.pow(2).mean().sqrt()
    return float(diff / ref) if ref > 0 else float(diff)


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    err = rel_rms(actual, expected)
    if not err <= tol:  # also catches NaN
        raise AssertionError(f"{name}: relative RMS error {err:.3g} exceeds {tol:.1g}")


@dataclass
class DSLAInputs:
    """One set of op arguments. q, g1, g2 [B, T, H, K]; k [B, T, Hk, K]; v [B, T, Hk, V];
    mix [2] or [H, 2]; initial_state a pair of [N, H, K, V] (or None)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g1: torch.Tensor
    g2: torch.Tensor
    mix: torch.Tensor
    initial_state: tuple[torch.Tensor, torch.Tensor] | None

    def args(self) -> tuple:
        """Positional arguments q, k, v, g1, g2, mix."""
        return self.q, self.k, self.v, self.g1, self.g2, self.mix

    def leaves(self) -> list[torch.Tensor]:
        """Every tensor a gradient is taken for: q, k, v, g1, g2, mix and the initial states."""
        return [*self.args(), *(self.initial_state or ())]

    def to(self, dtype: torch.dtype, requires_grad: bool = False) -> "DSLAInputs":
        """A detached copy in `dtype` (the initial states stay in fp32/fp64 accordingly)."""
        def cvt(x):
            return x.detach().to(dtype).requires_grad_(requires_grad)
        state = None if self.initial_state is None else tuple(cvt(s) for s in self.initial_state)
        return DSLAInputs(*(cvt(x) for x in self.args()), state)


def make_inputs(B=2, T=37, H=4, Hk=2, K=8, V=6, *, dtype=torch.float64, mix_per_head=True,
                initial_state=True, num_states=None, strong_decay=False, requires_grad=False) -> DSLAInputs:
    """Random op inputs with realistic log-decays (seeded by the caller's torch.manual_seed).

    Decays follow the layer's gates, g = logsigmoid(logit) / 16: a slow history gate around
    logit 2 and a fast recency gate around logit -2. `strong_decay` instead draws every log-decay
    uniformly from [-5, 0] per step and channel (far beyond what a trained gate produces), which
    is what breaks naive exp(cumsum) formulations. `num_states` (default B) sizes the initial state.
    """
    def randn(*shape):
        return torch.randn(*shape, dtype=torch.float64)

    q, k, v = randn(B, T, H, K), randn(B, T, Hk, K), randn(B, T, Hk, V)
    if strong_decay:
        g1, g2 = (-5 * torch.rand(B, T, H, K, dtype=torch.float64) for _ in range(2))
    else:
        g1 = F.logsigmoid(randn(B, T, H, K) + 2.0) / 16
        g2 = F.logsigmoid(2 * randn(B, T, H, K) - 2.0) / 16
    mix = torch.softmax(randn(H, 2) if mix_per_head else randn(2), dim=-1)
    n = B if num_states is None else num_states
    state = (randn(n, H, K, V), randn(n, H, K, V)) if initial_state else None
    return DSLAInputs(q, k, v, g1, g2, mix, state).to(dtype, requires_grad)


def loss_weights(tensors, seed: int = 1234) -> list[torch.Tensor]:
    """Fixed random contiguous weights w_i so that sum_i (w_i * t_i).sum() is a generic scalar loss."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in tensors]


def weighted_loss(tensors, weights) -> torch.Tensor:
    return sum((t.double() * w).sum() for t, w in zip(tensors, weights))


def grads(outputs, leaves, weights) -> list[torch.Tensor]:
    """Gradients of weighted_loss(outputs) w.r.t. leaves (zeros where a leaf is unused)."""
    return list(torch.autograd.grad(weighted_loss(outputs, weights), leaves, allow_unused=True,
                                    materialize_grads=True))


GRAD_NAMES = ("q", "k", "v", "g1", "g2", "mix", "initial_state[0]", "initial_state[1]")


def _nan_filled(alloc):
    def wrapped(*args, **kwargs):
        out = alloc(*args, **kwargs)
        if out.is_floating_point() or out.is_complex():
            with torch.no_grad():
                out.fill_(float("nan"))
        return out
    return wrapped


@contextlib.contextmanager
def nan_poisoned_allocations():
    """Make torch.empty, torch.empty_like and Tensor.new_empty return NaN-filled tensors.

    Any buffer an implementation allocates without initialising then carries NaN into its outputs
    unless every position is written, so a never-written position fails the comparison.
    """
    saved = torch.empty, torch.empty_like, torch.Tensor.new_empty
    torch.empty, torch.empty_like = _nan_filled(saved[0]), _nan_filled(saved[1])
    torch.Tensor.new_empty = _nan_filled(saved[2])
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = saved


def naive_reference(x: DSLAInputs, scale=None):
    """naive_dsla on x (outputs, final states)."""
    return naive_dsla(*x.args(), scale=scale, initial_state=x.initial_state, output_final_state=True)


def compare_with_reference(run, x: DSLAInputs, dtype: torch.dtype, *, reference=naive_reference,
                           with_grads: bool = True, tol: float | None = None) -> None:
    """Check an implementation in `dtype` against `reference` evaluated in float64.

    run / reference: callables DSLAInputs -> (o, (s1, s2)). Compares o, both final states and, when
    with_grads, the gradients of a generic loss of (o, s1, s2) w.r.t. q, k, v, g1, g2, mix and the
    initial states, each at relative-RMS tolerance `tol` (default TOLERANCE[dtype]).
    """
    tol = TOLERANCE[dtype] if tol is None else tol
    ref_in = x.to(torch.float64, requires_grad=with_grads)
    o_ref, s_ref = reference(ref_in)
    inp = x.to(dtype, requires_grad=with_grads)
    o, s = run(inp)
    assert o.dtype == dtype, f"output dtype {o.dtype}, expected {dtype}"
    assert all(t.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) for t in s)
    for name, a, b in (("o", o, o_ref), ("s1", s[0], s_ref[0]), ("s2", s[1], s_ref[1])):
        assert_close(name, a, b, tol)
    if with_grads:
        weights = loss_weights([o_ref, *s_ref])
        g_ref = grads([o_ref, *s_ref], ref_in.leaves(), weights)
        g = grads([o, *s], inp.leaves(), weights)
        for name, a, b in zip(GRAD_NAMES, g, g_ref):
            assert_close(f"d{name}", a, b, tol)
