"""Golden values for SvdAdapter and LoraAdapter: forward output and all gradients, by PyTorch.

Usage: adapter_forward.py IN.safetensors OUT.safetensors
IN holds x, gy (upstream gradient), W, b, scale (0-d) and either P, lam, mask, Q (SVD form:
y = x W^T + b + s ((x Q^T) * (lam * mask)) P^T) or A, B (LoRA: y = x W^T + b + s (x A^T) B^T).
OUT holds y and the gradient of sum(y * gy) with respect to x and every adapter tensor.
"""
import sys

import torch
from safetensors.torch import load_file, save_file

t = load_file(sys.argv[1])
x = t["x"].clone().requires_grad_(True)
s = t["scale"].item()
base = torch.nn.functional.linear(x, t["W"], t["b"])
if "P" in t:
    P, lam, Q = (t[k].clone().requires_grad_(True) for k in ("P", "lam", "Q"))
    y = base + s * ((x @ Q.T) * (lam * t["mask"])) @ P.T
    leaves = {"P": P, "lam": lam, "Q": Q}
else:
    A, B = (t[k].clone().requires_grad_(True) for k in ("A", "B"))
    y = base + s * (x @ A.T) @ B.T
    leaves = {"A": A, "B": B}
(y * t["gy"]).sum().backward()
out = {"y": y.detach(), "dx": x.grad}
out.update({"d" + k: v.grad for k, v in leaves.items()})
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[2])
