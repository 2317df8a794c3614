"""The default cache budget on a GPU: this process's share, whatever else runs on the GPU (no GPU needed)."""

import pytest

from dsla_serve.replicas.planner import share_budget

GIB = 1024**3


def test_budget_is_the_process_share_minus_its_own_allocations_and_reserve():
    assert share_budget(80 * GIB, 14 * GIB, 0.9, 2 * GIB) == int(0.9 * 80 * GIB) - 16 * GIB


def test_two_replicas_sharing_a_gpu_each_plan_a_cache_in_their_half():
    # each replica passes gpu_memory_fraction = 0.9 * 0.5 and subtracts only its own weights, so the
    # two budgets plus both weights and reserves fit in 90% of the GPU
    total, weights, reserve = 80 * GIB, 14 * GIB, 2 * GIB
    each = share_budget(total, weights, 0.9 * 0.5, reserve)
    assert each == int(0.45 * total) - weights - reserve > 0
    assert 2 * (each + weights + reserve) <= 0.9 * total


def test_nothing_left_is_a_clear_error():
    with pytest.raises(ValueError, match="no GPU memory left for the cache.*0.45 of 20.0 GiB.*8.0 GiB it already"):
        share_budget(20 * GIB, 8 * GIB, 0.45, 1 * GIB)
