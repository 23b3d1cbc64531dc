"""Golden values for the BERT encoder, its heads and adapter gradients, by transformers.

Usage: bert.py FOLDER SPEC.json IN.safetensors OUT.safetensors
SPEC: {"texts": [...], "pairs": [...] | null, "max_length": int, "num_labels": int}
IN: classifier.weight / classifier.bias (the head to use for logits); optionally, for every
adapted module path M: adapter.M.P, adapter.M.lam, adapter.M.mask, adapter.M.Q, adapter.M.scale
(added to that linear layer's output as s ((x Q^T) * (lam * mask)) P^T), and gy, the upstream
gradient of the last hidden states.
OUT: input_ids, attention_mask, token_type_ids, hidden (last hidden states), embeddings (mean
pooled over real tokens), logits, and grad.M.{P,lam,Q} when adapters and gy are given.
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertForSequenceClassification, BertModel
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

folder, spec_path, in_path, out_path = sys.argv[1:5]
spec = json.load(open(spec_path))
t = load_file(in_path)
torch.manual_seed(0)

tok = AutoTokenizer.from_pretrained(folder)
args = [spec["texts"]] + ([spec["pairs"]] if spec.get("pairs") else [])
enc = tok(*args, padding=True, truncation=True, max_length=spec["max_length"], return_tensors="pt")
enc.setdefault("token_type_ids", torch.zeros_like(enc["input_ids"]))

model = BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
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

inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
hidden = model(**inputs).last_hidden_state
out = {k: v.contiguous() for k, v in inputs.items()}
out["hidden"] = hidden.detach()
m = inputs["attention_mask"].unsqueeze(-1).float()
out["embeddings"] = ((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)).detach()
if leaves and "gy" in t:
    (hidden * t["gy"]).sum().backward()
    for path, ps in leaves.items():
        for n, p in ps.items():
            out[f"grad.{path}.{n}"] = p.grad
if "classifier.weight" in t:
    clf = BertForSequenceClassification.from_pretrained(folder, num_labels=spec["num_labels"]).eval()
    with torch.no_grad():
        clf.classifier.weight.copy_(t["classifier.weight"])
        clf.classifier.bias.copy_(t["classifier.bias"])
        if "pooler.weight" in t:
            clf.bert.pooler.dense.weight.copy_(t["pooler.weight"])
            clf.bert.pooler.dense.bias.copy_(t["pooler.bias"])
        out["logits"] = clf(**inputs).logits
save_file({k: v.contiguous() for k, v in out.items()}, out_path)
