"""Probe: an elementwise Triton GEMV (y = W x, one row) against cuBLAS for o and down at batch 1."""
import itertools
import statistics
import sys

import torch
sys.path.insert(0, ".")
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def gemv_kernel(x, w, y, N, K: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr,
                SILU: tl.constexpr = False):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BN + tl.arange(0, BN)
    m_n = rows < N
    acc = tl.zeros([BN, BK], dtype=tl.float32)
    KS: tl.constexpr = ((K + SPLIT * BK - 1) // (SPLIT * BK)) * BK
    for k0 in range(pid_s * KS, pid_s * KS + KS, BK):
        cols = k0 + tl.arange(0, BK)
        m_k = cols < K
        xv = tl.load(x + cols, mask=m_k, other=0.0).to(tl.float32)
        if SILU:
            uv = tl.load(x + K + cols, mask=m_k, other=0.0).to(tl.float32)
            xv = (xv / (1.0 + tl.exp(-xv))).to(tl.bfloat16).to(tl.float32) * uv
            xv = xv.to(tl.bfloat16).to(tl.float32)
        wv = tl.load(w + rows[:, None] * K + cols[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0,
                     eviction_policy="evict_first")
        acc += wv.to(tl.float32) * xv[None, :]
    out = tl.sum(acc, axis=1)
    if SPLIT == 1:
        tl.store(y + rows, out.to(y.dtype.element_ty), mask=m_n)
    else:
        tl.atomic_add(y + rows, out, mask=m_n, sem="relaxed")


def gemv(x, w, y32, y, BN, BK, SPLIT, warps, stages, silu=False):
    N, K = w.shape
    if SPLIT == 1:
        gemv_kernel[(triton.cdiv(N, BN), 1)](x, w, y, N, K=K, BN=BN, BK=BK, SPLIT=1, SILU=silu, num_warps=warps,
                                             num_stages=stages)
    else:
        y32.zero_()
        gemv_kernel[(triton.cdiv(N, BN), SPLIT)](x, w, y32, N, K=K, BN=BN, BK=BK, SPLIT=SPLIT, num_warps=warps,
                                                 num_stages=stages)
        y.copy_(y32)


def graph_ms(fn, replays=30):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(); fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    t = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); b.synchronize()
        t.append(a.elapsed_time(b))
    return statistics.median(t[3:])


def main():
    dev = "cuda"
    buf = torch.empty(4 << 30, dtype=torch.uint8, device=dev)
    ms = graph_ms(lambda: buf[: 2 << 30].copy_(buf[2 << 30:]))
    bw = 2 * (2 << 30) / (ms * 1e-3)
    del buf
    print(f"copy bw {bw / 1e12:.3f} TB/s", flush=True)
    rows = []
    from dsla_serve.kernels.block import silu_mul
    shapes = {"o": (4096, 4096, False), "down": (4096, 11008, False), "down+act": (4096, 11008, True),
              "q/k/v": (12288, 4096, False), "gate/up": (22016, 4096, False), "lm_head": (32000, 4096, False)}
    for name, (N, K, silu) in shapes.items():
        L = 1 if name == "lm_head" else 32
        ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(L)]
        x = torch.randn(2 * K if silu else K, device=dev, dtype=torch.bfloat16)
        nbytes = L * N * K * 2
        xin = (silu_mul(x[None, :K], x[None, K:])[0]) if silu else x
        ref = F.linear(xin[None], ws[0])[0].float()
        ys = [torch.empty(N, device=dev, dtype=torch.bfloat16) for _ in ws]
        y32 = torch.empty(N, device=dev, dtype=torch.float32)
        for blas in ("cublas", "cublaslt"):
            torch.backends.cuda.preferred_blas_library(blas)
            if silu:
                fn = lambda: [F.linear(silu_mul(x[None, :K], x[None, K:]), w) for w in ws]  # noqa: E731
            else:
                fn = lambda: [F.linear(x[None], w) for w in ws]  # noqa: E731
            m = graph_ms(fn)
            rows.append((name, blas, m, nbytes / (m * 1e-3) / bw, 0.0))
            print(rows[-1], flush=True)
        torch.backends.cuda.preferred_blas_library("cublas")
        for BN, BK, SPLIT, warps, stages in itertools.product((4, 8, 16), (512, 1024), (1,), (4, 8), (3,)):
            try:
                gemv(x, ws[0], y32, ys[0], BN, BK, SPLIT, warps, stages, silu)
                err = (ys[0].float() - ref).abs().max().item() / ref.abs().max().item()
                m = graph_ms(lambda: [gemv(x, w, y32, y, BN, BK, SPLIT, warps, stages, silu) for w, y in zip(ws, ys)])
            except Exception as e:  # noqa: BLE001
                print(name, BN, BK, SPLIT, warps, stages, "failed", type(e).__name__, str(e)[:200], flush=True)
                continue
            rows.append((name, f"triton bn{BN} bk{BK} s{SPLIT} w{warps} st{stages}", m, nbytes / (m * 1e-3) / bw, err))
            print(rows[-1], flush=True)
        del ws
    print("\n== gemv probe, 32 layers per graph; device", torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for name in shapes:
        sub = sorted([r for r in rows if r[0] == name], key=lambda r: r[2])
        for r in [x for x in sub if not x[1].startswith("triton")] + [x for x in sub if x[1].startswith("triton")][:8]:
            print(f"{r[0]:>5} {r[1]:>34} {r[2]:8.4f} ms  {r[3]:.3f}x bw  relerr {r[4]:.1e}")


if __name__ == "__main__":
    sys.exit(main())
