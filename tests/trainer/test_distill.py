"""FitResult's rates: the whole loop's, and the steady one that leaves the first step's compiles out."""

import pytest

from dsla_serve.trainer.distill import FitResult


def test_steady_rate_leaves_the_first_step_out():
    # 4 steps of 1000 tokens: the first took 5 s (compiles), the other three 1 s each
    fit = FitResult(losses=[1.0, 0.9, 0.8, 0.7], loop_seconds=8.0, first_step_seconds=5.0, tokens=4000)
    assert fit.tokens_per_second == pytest.approx(4000 / 8.0)
    assert fit.steady_tokens_per_second == pytest.approx(3000 / 3.0)


def test_steady_rate_needs_two_steps():
    one_step = FitResult(losses=[1.0], loop_seconds=2.0, first_step_seconds=2.0, tokens=1000)
    assert one_step.steady_tokens_per_second is None
    assert FitResult().steady_tokens_per_second is None
