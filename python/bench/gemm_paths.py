"""Micro-benchmarks behind docs/performance.md, run on LibTorch from the project venv.

1. One float32 linear layer (767 tokens x 384 -> 1536, the encoder's widest shape) through MKL
   (`torch.nn.functional.linear`) and through oneDNN's inner product (`mkldnn_linear`, what
   flexlora's `gemm::linear` calls), forward only, in GFLOP/s.
2. A rank-8 adapter's forward and backward added to a frozen layer's output, for each of the
   encoder's three layer shapes, written two ways: two products then an add (what flexlora does)
   and the add folded into the second product (`addmm`), in microseconds.

Usage: .venv/bin/python python/bench/gemm_paths.py [--threads 2]
"""

import argparse
import time

import torch

TOKENS, RANK = 767, 8


def seconds_per_call(fn, calls=200, warmup=20):
    for _ in range(warmup):
        fn()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


def linear_rates():
    x = torch.randn(TOKENS, 384)
    w = torch.randn(1536, 384)
    flops = 2 * TOKENS * 384 * 1536
    mkl = seconds_per_call(lambda: torch.nn.functional.linear(x, w))
    onednn = seconds_per_call(
        lambda: torch._C._nn.mkldnn_linear(x.to_mkldnn(), w, None).to_dense()
    )
    print(f"linear {TOKENS}x384 -> 1536: MKL {flops / mkl / 1e9:.0f} GFLOP/s, "
          f"oneDNN {flops / onednn / 1e9:.0f} GFLOP/s (layout conversions included)")


def adapter_paths():
    for inp, out in [(384, 384), (384, 1536), (1536, 384)]:
        x = torch.randn(TOKENS, inp, requires_grad=True)
        a = torch.randn(RANK, inp, requires_grad=True)
        b = torch.randn(out, RANK, requires_grad=True)
        base = torch.randn(TOKENS, out)
        upstream = torch.randn(TOKENS, out)

        def two_products():
            y = base + (x @ a.t()) @ b.t() * 0.5
            y.backward(upstream)

        def folded():
            y = torch.addmm(base, x @ a.t(), b.t(), beta=1, alpha=0.5)
            y.backward(upstream)

        t1 = seconds_per_call(two_products)
        t2 = seconds_per_call(folded)
        gflop = 6 * TOKENS * RANK * (inp + out) / 1e9
        print(f"adapter {inp} -> {out} ({gflop:.2f} GFLOP forward+backward): "
              f"two products + add {t1 * 1e6:.0f} us, addmm {t2 * 1e6:.0f} us")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    linear_rates()
    adapter_paths()


if __name__ == "__main__":
    main()
