"""The reference `naive_dsla` against hand-computed cases and an independent closed-form sum."""

import math

import pytest
import torch

from dsla_serve.kernels import naive_dsla

from .utils import assert_close, make_inputs


def explicit_sum_dsla(q, k, v, g1, g2, mix, scale, initial_state):
    """The unrolled recurrence, written as explicit sums over earlier tokens (float64, tiny sizes):

        S_T = diag(exp(L_T)) S_0 + sum_u diag(exp(L_T - L_u)) k_u^T v_u,     L_t = sum_{r <= t} g_r
        o_t = sum_j m_j [ (s q_t * exp(L_t)) S0_j + sum_{u <= t} ((s q_t * exp(L_t - L_u)) . k_u) v_u ]
    """
    B, T, H, K = q.shape
    Hk, V = k.shape[2], v.shape[3]
    m = mix.expand(H, 2) if mix.dim() == 2 else mix.view(1, 2).expand(H, 2)
    o = torch.zeros(B, T, H, V, dtype=torch.float64)
    finals = [torch.zeros(B, H, K, V, dtype=torch.float64) for _ in range(2)]
    for j, g in enumerate((g1, g2)):
        L = g.cumsum(dim=1)
        for b in range(B):
            for h in range(H):
                kh = h // (H // Hk)
                s0 = initial_state[j][b, h]
                for t in range(T):
                    qt = scale * q[b, t, h]
                    acc = (qt * torch.exp(L[b, t, h])) @ s0
                    for u in range(t + 1):
                        acc = acc + torch.dot(qt * torch.exp(L[b, t, h] - L[b, u, h]), k[b, u, kh]) * v[b, u, kh]
                    o[b, t, h] += m[h, j] * acc
                last = L[b, T - 1, h]
                s = torch.exp(last)[:, None] * s0
                for u in range(T):
                    s = s + torch.outer(torch.exp(last - L[b, u, h]) * k[b, u, kh], v[b, u, kh])
                finals[j][b, h] = s
    return o, tuple(finals)


@pytest.mark.parametrize("mix_per_head", [True, False], ids=["mix[H,2]", "mix[2]"])
@pytest.mark.parametrize("H,Hk", [(4, 4), (4, 2), (4, 1)], ids=["MHA", "GQA2", "MQA"])
def test_naive_equals_explicit_sum(H, Hk, mix_per_head):
    torch.manual_seed(0)
    x = make_inputs(B=2, T=6, H=H, Hk=Hk, K=3, V=2, mix_per_head=mix_per_head)
    o, (s1, s2) = naive_dsla(*x.args(), scale=0.7, initial_state=x.initial_state, output_final_state=True)
    o_ref, (r1, r2) = explicit_sum_dsla(*x.args(), 0.7, x.initial_state)
    assert_close("o", o, o_ref, 1e-12)
    assert_close("s1", s1, r1, 1e-12)
    assert_close("s2", s2, r2, 1e-12)


def test_single_token_by_hand():
    # K = 2 channels with their own decays, V = 1, scale 1, initial states given:
    #   S1 = diag(0.5, 1) [4, 2]^T + k^T v = [2, 2] + [1, 3] * 5 = [7, 17]
    #   S2 = diag(0.25, 0) [8, 6]^T + k^T v = [2, 0] + [5, 15]  = [7, 15]
    #   o  = 0.25 * (q . S1) + 0.75 * (q . S2),  q = [2, -1]:  0.25 * (-3) + 0.75 * (-1) = -1.5
    q = torch.tensor([2.0, -1.0], dtype=torch.float64).view(1, 1, 1, 2)
    k = torch.tensor([1.0, 3.0], dtype=torch.float64).view(1, 1, 1, 2)
    v = torch.tensor([5.0], dtype=torch.float64).view(1, 1, 1, 1)
    g1 = torch.tensor([math.log(0.5), 0.0], dtype=torch.float64).view(1, 1, 1, 2)
    g2 = torch.tensor([math.log(0.25), -math.inf], dtype=torch.float64).view(1, 1, 1, 2)
    s1 = torch.tensor([4.0, 2.0], dtype=torch.float64).view(1, 1, 2, 1)
    s2 = torch.tensor([8.0, 6.0], dtype=torch.float64).view(1, 1, 2, 1)
    mix = torch.tensor([0.25, 0.75], dtype=torch.float64)
    o, (n1, n2) = naive_dsla(q, k, v, g1, g2, mix, scale=1.0, initial_state=(s1, s2), output_final_state=True)
    assert n1.flatten().tolist() == pytest.approx([7.0, 17.0])
    assert n2.flatten().tolist() == pytest.approx([7.0, 15.0])
    assert o.item() == pytest.approx(-1.5)


def test_two_tokens_by_hand():
    # K = V = 1, zero initial state, scale 0.5, mix (0.25, 0.75), q = (1, 2), k = (1, 1), v = (2, 3):
    #   t=1: S1 = S2 = 2;                           o1 = 0.5 * 1 * (0.25 * 2 + 0.75 * 2) = 1
    #   t=2: S1 = 0.5 * 2 + 3 = 4, S2 = 0.25 * 2 + 3 = 3.5;  o2 = 0.5 * 2 * (0.25 * 4 + 0.75 * 3.5) = 3.625
    col = lambda *xs: torch.tensor(xs, dtype=torch.float64).view(1, len(xs), 1, 1)  # noqa: E731
    o, (s1, s2) = naive_dsla(col(1.0, 2.0), col(1.0, 1.0), col(2.0, 3.0),
                             col(0.0, math.log(0.5)), col(0.0, math.log(0.25)),
                             torch.tensor([0.25, 0.75], dtype=torch.float64), scale=0.5,
                             output_final_state=True)
    assert o.flatten().tolist() == pytest.approx([1.0, 3.625])
    assert (s1.item(), s2.item()) == pytest.approx((4.0, 3.5))


def test_default_scale_and_dtypes():
    torch.manual_seed(0)
    x = make_inputs(B=1, T=3, H=2, Hk=2, K=4, V=4)
    o_default, _ = naive_dsla(*x.args(), initial_state=x.initial_state)
    o_explicit, _ = naive_dsla(*x.args(), scale=4**-0.5, initial_state=x.initial_state)
    assert torch.equal(o_default, o_explicit)
    o, (s1, s2) = naive_dsla(*x.to(torch.bfloat16).args(), output_final_state=True)
    assert o.dtype == torch.bfloat16 and s1.dtype == s2.dtype == torch.float32


def test_without_final_state_and_empty_sequence():
    torch.manual_seed(0)
    x = make_inputs(B=2, T=0, H=2, Hk=1, K=4, V=3)
    o, state = naive_dsla(*x.args(), initial_state=x.initial_state, output_final_state=True)
    assert o.shape == (2, 0, 2, 3)
    assert torch.equal(state[0], x.initial_state[0]) and torch.equal(state[1], x.initial_state[1])
    assert naive_dsla(*x.args())[1] is None
