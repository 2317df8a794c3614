"""Perplexity by position bucket equals a hand computation on a tiny model."""

import math

import numpy as np
import pytest
import torch

from dsla_serve.model.tiny import build_tiny_model
from dsla_serve.quality.perplexity import perplexity, windows_of


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("llama", num_layers=2, hidden_size=32, num_heads=2, num_kv_heads=1)


def _docs():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=70), rng.integers(0, 256, size=45)]


def test_windows_are_full_non_overlapping_and_round_robin():
    a, b = _docs()
    wins = windows_of([a, b], 16)
    expected = [a[0:16], b[0:16], a[16:32], b[16:32], a[32:48], a[48:64]]
    assert len(wins) == 6 and all(np.array_equal(w, e) for w, e in zip(wins, expected))
    assert len(windows_of([a, b], 16, max_windows=3)) == 3


@pytest.mark.parametrize("max_windows", [None, 3])
def test_bucketed_perplexity_matches_hand_computation(model, max_windows):
    context, buckets = 16, ((0, 4), (4, 10), (10, 16))
    wins = windows_of(_docs(), context, max_windows)
    sums, counts = {b: 0.0 for b in buckets}, {b: 0 for b in buckets}
    with torch.no_grad():
        for w in wins:
            ids = torch.as_tensor(w, dtype=torch.long)[None]
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            for t in range(1, context):  # token t predicted from tokens < t
                bucket = next(b for b in buckets if b[0] <= t < b[1])
                sums[bucket] -= logp[t - 1, w[t]].item()
                counts[bucket] += 1
    result = perplexity(model, _docs(), context, buckets, max_windows=max_windows, batch_size=4, curve_bin=5,
                        progress=False)
    assert result["windows"] == len(wins)
    for row, b in zip(result["buckets"], buckets):
        assert (row["lo"], row["hi"], row["tokens"]) == (b[0], b[1], counts[b])
        assert row["nll"] == pytest.approx(sums[b] / counts[b], rel=1e-5)
        assert row["ppl"] == pytest.approx(math.exp(sums[b] / counts[b]), rel=1e-5)
    total = sum(sums.values()) / sum(counts.values())
    assert result["overall"]["tokens"] == 15 * len(wins)
    assert result["overall"]["nll"] == pytest.approx(total, rel=1e-5)
    assert result["curve"]["position"] == [1, 6, 11]


def test_no_full_window_is_an_error(model):
    with pytest.raises(ValueError, match="no document has a full 100-token window"):
        perplexity(model, _docs(), context=100, progress=False)
