"""Decoder training with transformers + PEFT: the Python side of `flexlora bench-decoder`.

Usage: decoder_step.py SPEC.json
SPEC (written by flexlora): {"side", "model": decoder folder, "batch_file": safetensors with
input_ids, attention_mask and labels (-100 where no loss), "steps", "threads", "r", "alpha",
"dropout", "target_modules", "lr", "weight_decay", "clip_norm", "result": output JSON}
A step is what a PEFT user runs: LlamaForCausalLM (float32) with PEFT's LoRA, forward with labels
(the mean cross-entropy of the labelled tokens), backward, clip_grad_norm_, AdamW, zero_grad.
Writes {"side", "peak_rss_mib" (VmHWM of this process), "step_seconds", "losses"}.
"""
import json
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

spec = json.load(open(sys.argv[1]))
torch.manual_seed(0)
torch.set_num_threads(spec["threads"])
model = AutoModelForCausalLM.from_pretrained(spec["model"], torch_dtype=torch.float32)
config = LoraConfig(
    task_type="CAUSAL_LM",
    r=spec["r"],
    lora_alpha=spec["alpha"],
    lora_dropout=spec["dropout"],
    target_modules=spec["target_modules"],
)
model = get_peft_model(model, config)
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=spec["weight_decay"])
batch = load_file(spec["batch_file"])
seconds, losses = [], []
for _ in range(spec["steps"]):
    started = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    if spec["clip_norm"] > 0:
        torch.nn.utils.clip_grad_norm_(params, spec["clip_norm"])
    opt.step()
    opt.zero_grad()
    seconds.append(time.perf_counter() - started)
    losses.append(loss.item())


def peak_rss_mib():
    # VmHWM: per address space, so it starts afresh at exec (unlike ru_maxrss).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


result = {"side": spec["side"], "peak_rss_mib": peak_rss_mib(), "step_seconds": seconds, "losses": losses}
with open(spec["result"], "w") as f:
    json.dump(result, f, indent=1)
