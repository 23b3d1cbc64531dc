"""Golden logits from Python PEFT and transformers for adapters exported here and models merged here.

Usage: peft_logits.py SPEC.json IN.safetensors OUT.safetensors
SPEC: {"texts": [...], "pairs": [...] (optional), "max_length": int, "jobs": [job, ...]} with
each job either
  {"name": N, "base": FOLDER, "adapter": DIR, "num_labels": K}: the base folder's
      ...ForSequenceClassification (BERT, DeBERTa-v2/v3) or ...ForImageClassification (ViT,
      DINOv2; the spec then has "images": true) with the PEFT adapter loaded by
      PeftModel.from_pretrained (every tensor of adapter_model.safetensors must arrive in the
      model unchanged), or
  {"name": N, "merged": FOLDER}: AutoModelForSequenceClassification on a merged folder, without
      PEFT (no missing or unexpected weights allowed).
IN: unused for texts; for images, pixel_values [batch, 3, H, W] (the model input, so the
comparison does not depend on an image processor). OUT: input_ids, attention_mask (of the first
job's tokenizer; absent for images) and logits.N per job.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

spec_path, in_path, out_path = sys.argv[1:4]
spec = json.load(open(spec_path))
images = spec.get("images", False)
Auto = AutoModelForImageClassification if images else AutoModelForSequenceClassification
torch.manual_seed(0)
out = {}


def encode(folder):
    if images:
        return {"pixel_values": load_file(in_path)["pixel_values"]}
    tok = AutoTokenizer.from_pretrained(folder)
    args = [spec["texts"]] + ([spec["pairs"]] if spec.get("pairs") else [])
    enc = tok(*args, padding=True, truncation=True, max_length=spec["max_length"], return_tensors="pt")
    enc.setdefault("token_type_ids", torch.zeros_like(enc["input_ids"]))
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


for job in spec["jobs"]:
    if "adapter" in job:
        from peft import PeftModel, get_peft_model_state_dict

        inputs = encode(job["base"])
        base = Auto.from_pretrained(job["base"], num_labels=job["num_labels"])
        model = PeftModel.from_pretrained(base, job["adapter"]).eval()
        loaded = get_peft_model_state_dict(model)
        saved = load_file(os.path.join(job["adapter"], "adapter_model.safetensors"))
        if set(loaded) != set(saved):
            raise SystemExit(f"{job['name']}: keys differ: {sorted(set(loaded) ^ set(saved))[:6]}")
        for k, v in saved.items():
            if not torch.equal(loaded[k].cpu(), v):
                raise SystemExit(f"{job['name']}: {k} did not load unchanged")
    else:
        inputs = encode(job["merged"])
        model, info = Auto.from_pretrained(job["merged"], output_loading_info=True)
        model.eval()
        bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if bad:
            raise SystemExit(f"{job['name']}: loading {job['merged']}: {bad}")
    with torch.no_grad():
        out[f"logits.{job['name']}"] = model(**inputs).logits.float()
    if not images:
        out.setdefault("input_ids", inputs["input_ids"])
        out.setdefault("attention_mask", inputs["attention_mask"])
save_file({k: v.contiguous() for k, v in out.items()}, out_path)
