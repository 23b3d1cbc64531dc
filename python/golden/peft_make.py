"""PEFT LoRA adapters made by Python PEFT on a classifier folder, with their logits: the golden
adapters of the import tests beyond BERT (DeBERTa sequence classifiers, ViT / DINOv2 image
classifiers).

Usage: peft_make.py SPEC.json IN.safetensors OUT.safetensors
SPEC: {"base": FOLDER, "num_labels": K, "images": bool, "seed": int, "std": float,
       "lora": {LoraConfig fields}, "out": DIR,
       "texts": [...], "max_length": int}            (texts, for sequence classifiers)
  The base folder's ...ForSequenceClassification (task_type SEQ_CLS, which puts the classifier
  in modules_to_save) or, with "images", ...ForImageClassification (no task type; the LoRA
  config should name modules_to_save) gets a LoRA adapter with get_peft_model. Every lora_A and
  lora_B and every module in modules_to_save is then redrawn from N(0, std^2) (torch seed
  "seed"), so that no adapter weight is the zero PEFT initialises lora_B with; the adapter is
  saved with save_pretrained (safetensors) in DIR.
IN: pixel_values [batch, 3, H, W] for images (unused for texts).
OUT: logits of the PEFT model (eval mode) on the inputs; for texts also input_ids and
  attention_mask.
"""
import json
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

spec_path, in_path, out_path = sys.argv[1:4]
spec = json.load(open(spec_path))
images = spec.get("images", False)
torch.manual_seed(spec.get("seed", 0))
Auto = AutoModelForImageClassification if images else AutoModelForSequenceClassification
base = Auto.from_pretrained(spec["base"], num_labels=spec["num_labels"])
lora = dict(spec["lora"])
if not images:
    lora.setdefault("task_type", "SEQ_CLS")
model = get_peft_model(base, LoraConfig(**lora))
std = spec.get("std", 0.05)
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_A" in name or "lora_B" in name or "modules_to_save" in name:
            p.normal_(0.0, std)
model.save_pretrained(spec["out"], safe_serialization=True)
model.eval()

out = {}
if images:
    inputs = {"pixel_values": load_file(in_path)["pixel_values"]}
else:
    tok = AutoTokenizer.from_pretrained(spec["base"])
    enc = tok(spec["texts"], padding=True, truncation=True, max_length=spec["max_length"],
              return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask")}
    out.update(inputs)
with torch.no_grad():
    out["logits"] = model(**inputs).logits.float()
save_file({k: v.contiguous() for k, v in out.items()}, out_path)
