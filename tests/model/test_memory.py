import pytest
import torch

from dsla_serve.model import cache_bytes_per_token, convert, dsla_state_bytes

from .helpers import tiny


def test_kv_bytes_shrink_and_state_bytes_grow_with_depth():
    model = convert(tiny(), [3, 1])  # 4 layers, 2 key/value heads of 16, 4 query heads
    per_layer_kv = 2 * 2 * 16 * 4  # key + value, float32
    per_layer_state = 2 * 4 * 16 * 16 * 4  # two fp32 states [H, K, V]
    assert [cache_bytes_per_token(model, d) for d in (0, 1, 2)] == [4 * per_layer_kv, 3 * per_layer_kv,
                                                                    2 * per_layer_kv]
    assert [dsla_state_bytes(model, d) for d in (0, 1, 2)] == [0, per_layer_state, 2 * per_layer_state]
    assert cache_bytes_per_token(model, 1, torch.bfloat16) == 3 * per_layer_kv // 2


def test_depth_beyond_the_order_is_refused():
    model = convert(tiny(), [0])
    with pytest.raises(ValueError, match=r"depth must be an int in \[0, 1\]"):
        cache_bytes_per_token(model, 2)
    with pytest.raises(ValueError, match=r"depth must be an int in \[0, 1\]"):
        dsla_state_bytes(model, -1)
