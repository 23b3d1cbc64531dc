"""Adapters trained for a few steps by Python PEFT on real sentences: the golden adapters of the
import tests.

Usage: peft_train.py SPEC.json IN.safetensors OUT.safetensors
SPEC: {"base": FOLDER, "texts": [...], "labels": [0/1, ...], "eval_texts": [...],
       "max_length": int, "steps": int, "out": DIR}
Trains on BertForSequenceClassification(base, num_labels=2) (classifier in modules_to_save) and
saves with save_pretrained under DIR:
  lora_uniform: LORA, r 4, alpha 8, use_rslora, on query / value;
  lora_patterns: LORA, r 4, alpha 8, rank_pattern and alpha_pattern, on query / value /
      intermediate.dense;
  adalora: ADALORA, init_r 6 -> target_r 3 (update_and_allocate every step, so ranks differ).
IN: unused. OUT: input_ids, attention_mask and logits.<name> of each trained model (eval mode)
on eval_texts.
"""
import json
import os
import sys

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertForSequenceClassification
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

spec_path, _in_path, out_path = sys.argv[1:4]
spec = json.load(open(spec_path))
steps = spec["steps"]
tok = AutoTokenizer.from_pretrained(spec["base"])


def encode(texts):
    enc = tok(texts, padding=True, truncation=True, max_length=spec["max_length"], return_tensors="pt")
    enc.setdefault("token_type_ids", torch.zeros_like(enc["input_ids"]))
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


train = encode(spec["texts"])
labels = torch.tensor(spec["labels"])
test = encode(spec["eval_texts"])
configs = {
    "lora_uniform": LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=8, use_rslora=True, lora_dropout=0.1, target_modules=["query", "value"]
    ),
    "lora_patterns": LoraConfig(
        task_type="SEQ_CLS",
        r=4,
        lora_alpha=8,
        lora_dropout=0.1,
        target_modules=["query", "value", "intermediate.dense"],
        rank_pattern={"encoder.layer.0.attention.self.query": 6, "layer.2.intermediate.dense": 2},
        alpha_pattern={"encoder.layer.1.attention.self.value": 3},
    ),
    "adalora": AdaLoraConfig(
        task_type="SEQ_CLS",
        init_r=6,
        target_r=3,
        lora_alpha=16,
        total_step=steps,
        tinit=2,
        tfinal=max(steps // 3, 1),
        deltaT=2,
        target_modules=["query", "key", "value", "output.dense", "intermediate.dense"],
    ),
}
out = {"input_ids": test["input_ids"], "attention_mask": test["attention_mask"]}
for name, config in configs.items():
    torch.manual_seed(0)
    model = get_peft_model(BertForSequenceClassification.from_pretrained(spec["base"], num_labels=2), config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-2)
    model.train()
    for step in range(steps):
        loss = model(**train, labels=labels).loss
        loss.backward()
        opt.step()
        if name == "adalora":
            model.base_model.update_and_allocate(step)
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        out[f"logits.{name}"] = model(**test).logits.float()
    model.save_pretrained(os.path.join(spec["out"], name))
save_file({k: v.contiguous() for k, v in out.items()}, out_path)
