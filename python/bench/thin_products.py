"""The four thin products of a rank-8 adapter's gradients, each in the operand layouts that
LibTorch's MKL runs slowly and in the ones flexlora uses (`adapter::tape`), in microseconds.

For a layer `in -> out` over 767 tokens with `x` `[tokens, in]`, the output gradient `g`
`[tokens, out]`, `down` `[r, in]` and `up` `[out, r]`:

  right = x downᵀ                 (same in both)
  left  = g up                    slow: `up` as a plain row-major `out x r` operand
                                  fast: `up` given as the transpose of a contiguous `r x out`
  ∂up   = gᵀ right                slow: `g.t().mm(right)`; fast: `(rightᵀ g)ᵀ`
  ∂down = leftᵀ x                 (same in both)

Usage: .venv/bin/python python/bench/thin_products.py [--threads 2]
"""

import argparse

import torch
from gemm_paths import seconds_per_call  # this folder's other benchmark (the script's path)

TOKENS, RANK = 767, 8


def microseconds(fn):
    return seconds_per_call(fn, calls=300, warmup=30) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, {TOKENS} tokens, rank {RANK}")
    print("in -> out | g up slow / fast | gT right slow / fast (us)")
    for fan_in, fan_out in [(384, 384), (384, 1536), (1536, 384)]:
        g = torch.randn(TOKENS, fan_out)
        up = torch.randn(fan_out, RANK)
        up_rows = up.t().contiguous()
        right = torch.randn(TOKENS, RANK)
        left_slow = microseconds(lambda: g.mm(up))
        left_fast = microseconds(lambda: g.mm(up_rows.t()))
        dup_slow = microseconds(lambda: g.t().mm(right))
        dup_fast = microseconds(lambda: right.t().mm(g).t())
        print(
            f"{fan_in} -> {fan_out} | {left_slow:.0f} / {left_fast:.0f} | "
            f"{dup_slow:.0f} / {dup_fast:.0f}"
        )


if __name__ == "__main__":
    main()
