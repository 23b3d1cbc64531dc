"""Golden values for the DeBERTa-v2/v3 encoder, its classification head and adapter gradients,
by transformers, on a random-initialised model.

Usage: deberta.py SPEC.json FOLDER IN.safetensors OUT.safetensors
SPEC: {"config": {DebertaV2Config fields}, "seed": int, "num_labels": int, "std": float,
       "bare": bool}
  When FOLDER has no config.json yet, a model is built from "config" with torch seed "seed",
  every weight redrawn from N(0, std^2) (layer-norm scales from U(0.5, 1.5)) so that attention
  is far from uniform and every term moves the output, and saved there with save_pretrained
  (safetensors): a DebertaV2ForSequenceClassification, or with "bare" a DebertaV2Model (no
  `deberta.` prefix, no pooler). The model is then read back from FOLDER for the outputs.
IN: input_ids, attention_mask and optionally token_type_ids ([batch, len], int64);
  optionally classifier.weight / classifier.bias (and pooler.weight / pooler.bias) to use for
  the logits; optionally, for every adapted module path M (relative to the encoder):
  adapter.M.P, adapter.M.lam, adapter.M.mask, adapter.M.Q, adapter.M.scale (added to that
  linear layer's output as s ((x Q^T) * (lam * mask)) P^T), and gy, the upstream gradient of
  the last hidden states.
OUT: hidden (last hidden states), logits, and grad.M.{P,lam,Q} when adapters and gy are given.

With FOLDER "-" no model is built or run; SPEC's "relative_positions": [[len, buckets,
max_position], ...] asks for transformers' build_relative_position of each, output as rel.I.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Model
from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

spec_path, folder, in_path, out_path = sys.argv[1:5]
spec = json.load(open(spec_path))
t = load_file(in_path)
num_labels = spec.get("num_labels", 3)

if folder == "-":
    out = {}
    for i, (n, buckets, max_position) in enumerate(spec["relative_positions"]):
        x = torch.zeros(1, n, 1)
        out[f"rel.{i}"] = build_relative_position(x, x, buckets, max_position)[0]
    save_file({k: v.contiguous() for k, v in out.items()}, out_path)
    sys.exit(0)

if not os.path.exists(os.path.join(folder, "config.json")):
    torch.manual_seed(spec.get("seed", 0))
    config = DebertaV2Config(**spec["config"], num_labels=num_labels)
    built = (DebertaV2Model if spec.get("bare") else DebertaV2ForSequenceClassification)(config)
    std = spec.get("std", 0.2)
    with torch.no_grad():
        for name, p in built.named_parameters():
            if "LayerNorm.weight" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, std)
    built.save_pretrained(folder, safe_serialization=True)

clf = DebertaV2ForSequenceClassification.from_pretrained(folder, num_labels=num_labels).eval()
model = clf.deberta

leaves = {}
for key in t:
    if key.startswith("adapter.") and key.endswith(".P"):
        path = key[len("adapter."):-len(".P")]
        P, lam, Q = (t[f"adapter.{path}.{n}"].clone().requires_grad_(True) for n in ("P", "lam", "Q"))
        mask, s = t[f"adapter.{path}.mask"], t[f"adapter.{path}.scale"].item()
        module = model.get_submodule(path)
        base = module.forward

        def forward(x, base=base, P=P, lam=lam, mask=mask, Q=Q, s=s):
            return base(x) + s * ((x @ Q.T) * (lam * mask)) @ P.T

        module.forward = forward
        leaves[path] = {"P": P, "lam": lam, "Q": Q}

inputs = {k: t[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in t}
hidden = model(**inputs).last_hidden_state
out = {"hidden": hidden.detach()}
if leaves and "gy" in t:
    (hidden * t["gy"]).sum().backward()
    for path, ps in leaves.items():
        for n, p in ps.items():
            out[f"grad.{path}.{n}"] = p.grad
with torch.no_grad():
    if "classifier.weight" in t:
        clf.classifier.weight.copy_(t["classifier.weight"])
        clf.classifier.bias.copy_(t["classifier.bias"])
    if "pooler.weight" in t:
        clf.pooler.dense.weight.copy_(t["pooler.weight"])
        clf.pooler.dense.bias.copy_(t["pooler.bias"])
    out["logits"] = clf(**inputs).logits
save_file({k: v.contiguous() for k, v in out.items()}, out_path)
