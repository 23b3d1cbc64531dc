"""Golden values for one AdaLoRA layer: PEFT's SVDLinear on an nn.Linear.

Usage: adalora_layer.py ALPHA IN.safetensors OUT.safetensors
IN: W [out, in], b [out] (the frozen layer), P [out, r] (lora_B), lambda [r] (lora_E),
Q [r, in] (lora_A), x [batch, len, in], gy (upstream gradient of the output).
OUT: y (the layer output, training mode, lora_dropout 0), grad.P / grad.lambda / grad.Q
(of sum(y * gy)), delta (get_delta_weight).
"""
import sys

import torch
from safetensors.torch import load_file, save_file

from peft.tuners.adalora import AdaLoraConfig
from peft.tuners.adalora.layer import SVDLinear

alpha = float(sys.argv[1])
t = load_file(sys.argv[2])
torch.set_num_threads(1)
out_f, in_f = t["W"].shape
r = t["Q"].shape[0]
base = torch.nn.Linear(in_f, out_f)
with torch.no_grad():
    base.weight.copy_(t["W"])
    base.bias.copy_(t["b"])
config = AdaLoraConfig(init_r=r, lora_alpha=alpha, lora_dropout=0.0, total_step=10, target_modules=["x"])
layer = SVDLinear(base, "default", config=config, r=r, lora_alpha=alpha)
layer.train()
with torch.no_grad():
    layer.lora_B["default"].copy_(t["P"])
    layer.lora_E["default"].copy_(t["lambda"].unsqueeze(1))
    layer.lora_A["default"].copy_(t["Q"])
y = layer(t["x"])
(y * t["gy"]).sum().backward()
out = {
    "y": y.detach(),
    "grad.P": layer.lora_B["default"].grad,
    "grad.lambda": layer.lora_E["default"].grad.view(-1),
    "grad.Q": layer.lora_A["default"].grad,
    "delta": layer.get_delta_weight("default").detach(),
}
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[3])
