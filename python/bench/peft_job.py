"""The main job with transformers + PEFT, for `flexlora bench`'s whole-job comparison.

Usage: peft_job.py FOLDER SPEC.json DATA_DIR OUT.json
DATA_DIR holds train.jsonl, validation.jsonl, test.jsonl ({"text", "label"} with labels 0/1),
written by `flexlora bench` from flexlora's own seeded split, so both sides see the same data.
SPEC as peft_worker.py plus "epochs", "batch_size", "seed". What a PEFT user would run at its
best plain settings: dynamic padding (each batch padded to its longest sentence), shuffled
batches, AdamW with linear warm-up and decay, clipping, AdaLoRA's update_and_allocate every
step, validation accuracy after every epoch with the best epoch's state kept, test accuracy of
that state at the end. Writes {"test_accuracy", "validation_accuracy", "steps", "seconds", "peak_rss_mib"}.
"""
import copy
import json
import random
import sys
import time

started = time.perf_counter()

import torch
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from common import peft_model, precision

folder, spec_path, data_dir, out_path = sys.argv[1:5]
spec = json.load(open(spec_path))
torch.manual_seed(spec["seed"])
random.seed(spec["seed"])
torch.set_num_threads(spec["threads"])


def read(name):
    return [json.loads(l) for l in open(f"{data_dir}/{name}.jsonl")]


train, validation, test = read("train"), read("validation"), read("test")
tokenizer = AutoTokenizer.from_pretrained(folder)
batches_per_epoch = (len(train) + spec["batch_size"] - 1) // spec["batch_size"]
total = spec.get("max_steps") or spec["epochs"] * batches_per_epoch

model = peft_model(folder, spec, total)
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
sched = get_linear_schedule_with_warmup(opt, int(spec["warmup_ratio"] * total), total)


def encode(rows):
    return tokenizer(
        [r["text"] for r in rows],
        padding=True,
        truncation=True,
        max_length=spec["max_length"],
        return_tensors="pt",
    )


def accuracy(rows):
    # Batches of similar length, as flexlora evaluates (less padding).
    rows = sorted(rows, key=lambda r: len(r["text"]))
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(rows), spec["eval_batch_size"]):
            chunk = rows[i : i + spec["eval_batch_size"]]
            with precision(spec):
                pred = model(**encode(chunk)).logits.argmax(-1)
            correct += sum(int(p) == r["label"] for p, r in zip(pred.tolist(), chunk))
    model.train()
    return correct / max(1, len(rows))


step, best, best_state = 0, -1.0, None
model.train()
for epoch in range(spec["epochs"]):
    order = list(range(len(train)))
    random.shuffle(order)
    for b in range(batches_per_epoch):
        if step >= total:
            break
        rows = [train[i] for i in order[b * spec["batch_size"] : (b + 1) * spec["batch_size"]]]
        enc = encode(rows)
        labels = torch.tensor([r["label"] for r in rows])
        with precision(spec):
            loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec["clip_norm"])
        opt.step()
        sched.step()
        if spec["method"] == "adalora":
            model.base_model.update_and_allocate(step)
        opt.zero_grad(set_to_none=True)
        step += 1
    val = accuracy(validation)
    if val > best:
        best = val
        best_state = copy.deepcopy({k: v for k, v in model.state_dict().items() if "lora_" in k or "classifier" in k})
    if step >= total:
        break
if best_state is not None:
    model.load_state_dict(best_state, strict=False)
def peak_rss_mib():
    # VmHWM: per address space, so it starts afresh at exec (unlike ru_maxrss).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


result = {
    "test_accuracy": accuracy(test),
    "validation_accuracy": best,
    "steps": step,
    "seconds": time.perf_counter() - started,
    "peak_rss_mib": peak_rss_mib(),
}
json.dump(result, open(out_path, "w"))
