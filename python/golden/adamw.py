"""Golden values for our AdamW: torch.optim.AdamW on the same parameters and gradients.

Usage: adamw.py IN.safetensors OUT.safetensors
IN holds p{i} (initial parameters), g{i}_{t} (gradient of p{i} at step t), lr (learning rate
per step, 1-d), and hyper = [beta1, beta2, eps, weight_decay]. OUT holds p{i}_{t}, the
parameters after step t.
"""
import sys

import torch
from safetensors.torch import load_file, save_file

t = load_file(sys.argv[1])
beta1, beta2, eps, wd = t["hyper"].tolist()
lrs = t["lr"].tolist()
n = sum(1 for k in t if k.startswith("p"))
params = [t[f"p{i}"].clone().requires_grad_(True) for i in range(n)]
opt = torch.optim.AdamW(params, lr=lrs[0], betas=(beta1, beta2), eps=eps, weight_decay=wd)
out = {}
for step, lr in enumerate(lrs):
    for group in opt.param_groups:
        group["lr"] = lr
    for i, p in enumerate(params):
        p.grad = t[f"g{i}_{step}"].clone()
    opt.step()
    for i, p in enumerate(params):
        out[f"p{i}_{step}"] = p.detach().clone()
save_file(out, sys.argv[2])
