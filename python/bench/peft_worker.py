"""Benchmark worker: transformers + PEFT on the same model, data and shapes as `flexlora bench`.

Usage: peft_worker.py FOLDER SPEC.json
A persistent process, so that the benchmark can alternate between the two sides without paying
Python's imports again. It reads one JSON command per line on stdin and answers one JSON line
on stdout:
  {"cmd": "steps", "n": N}      -> {"seconds": [N per-step wall times]}
  {"cmd": "predict", "file": F} -> {"seconds": s, "examples": n}  (F: JSONL with "text")
  {"cmd": "quit"}
SPEC: {"method": "lora" | "adalora", "threads", "batch": safetensors file with input_ids,
attention_mask, token_type_ids, labels (one fixed batch), "target_modules" (a regex), "r",
"alpha", "init_r", "target_r", "tinit", "tfinal", "deltaT", "total_step", "orth_reg_weight",
"lr", "warmup_ratio", "clip_norm", "max_length", "eval_batch_size"}
A training step is what a PEFT user runs: forward with labels (PEFT adds AdaLoRA's orthogonal
regularisation to the loss), backward, clip_grad_norm_, AdamW, the linear warm-up/decay
scheduler, AdaLoRA's update_and_allocate, zero_grad.
"""
import json
import sys
import time

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from common import peft_model, precision

folder, spec_path = sys.argv[1:3]
spec = json.load(open(spec_path))
torch.manual_seed(0)
torch.set_num_threads(spec["threads"])

model = peft_model(folder, spec, spec["total_step"])
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
sched = get_linear_schedule_with_warmup(
    opt, int(spec["warmup_ratio"] * spec["total_step"]), spec["total_step"]
)
batch = load_file(spec["batch"])
inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
labels = batch["labels"]
tokenizer = AutoTokenizer.from_pretrained(folder)
step = 0


def train_step():
    global step
    with precision(spec):
        out = model(**inputs, labels=labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(params, spec["clip_norm"])
    opt.step()
    sched.step()
    if spec["method"] == "adalora":
        model.base_model.update_and_allocate(step)
    opt.zero_grad(set_to_none=True)
    step += 1


def predict(path):
    # Batches of similar length, as flexlora's predict does (less padding).
    texts = sorted((json.loads(l)["text"] for l in open(path)), key=len)
    model.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), spec["eval_batch_size"]):
            enc = tokenizer(
                texts[i : i + spec["eval_batch_size"]],
                padding=True,
                truncation=True,
                max_length=spec["max_length"],
                return_tensors="pt",
            )
            with precision(spec):
                model(**enc).logits.argmax(-1)
    seconds = time.perf_counter() - started
    model.train()
    return {"seconds": seconds, "examples": len(texts)}


print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["cmd"] == "steps":
        times = []
        for _ in range(cmd["n"]):
            started = time.perf_counter()
            train_step()
            times.append(time.perf_counter() - started)
        print(json.dumps({"seconds": times}), flush=True)
    elif cmd["cmd"] == "predict":
        print(json.dumps(predict(cmd["file"])), flush=True)
    elif cmd["cmd"] == "quit":
        break
    else:
        print(json.dumps({"error": f"unknown command {cmd['cmd']}"}), flush=True)
