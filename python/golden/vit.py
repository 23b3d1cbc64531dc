"""Golden values for the ViT and DINOv2 encoders, their image-classification heads and adapter
gradients, by transformers, on random-initialised models (or on a real checkpoint folder).

Usage: vit.py SPEC.json FOLDER IN.safetensors OUT.safetensors
SPEC: {"model_type": "vit" | "dinov2", "config": {ViTConfig / Dinov2Config fields}, "seed": int,
       "num_labels": int, "std": float, "bare": bool, "spelling": "saved" | "modules"}
  When FOLDER has no config.json yet, a model is built from "config" with torch seed "seed",
  every weight redrawn from N(0, std^2) (layer-norm scales and DINOv2's layer scales from
  U(0.5, 1.5)) so that every term moves the output, and saved there with save_pretrained: a
  ...ForImageClassification, or with "bare" a ViTModel / Dinov2Model (no prefix, no head).
  With "spelling": "modules" the weights file is then rewritten under the module names of
  transformers 5 (`layers.0.attention.q_proj.weight`) instead of save_pretrained's
  (`encoder.layer.0.attention.attention.query.weight`). The model is read back from FOLDER.
IN: pixel_values.N [batch, channels, height, width], for any number of N; optionally
  classifier.weight / classifier.bias to use for the logits; optionally, for every adapted
  module path M (relative to the encoder, transformers 5 module names): adapter.M.P,
  adapter.M.lam, adapter.M.mask, adapter.M.Q, adapter.M.scale (added to that linear layer's
  output as s ((x Q^T) * (lam * mask)) P^T), and gy.N (the upstream gradient of the last
  hidden states of input N, for one N), which also asks for the gradients of the encoder
  parameters named in SPEC's "param_grads" list. With init_seed (a one-element tensor), the
  classifier that from_pretrained draws for a new head after torch.manual_seed(init_seed) is
  output as init.weight / init.bias.
OUT: hidden.N (last hidden states), logits.N (when classifier weights are given or the folder
  has a head), grad.M.{P,lam,Q} and grad.param.NAME when gy.N is given.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

CLASSES = {
    "vit": (ViTConfig, ViTModel, ViTForImageClassification),
    "dinov2": (Dinov2Config, Dinov2Model, Dinov2ForImageClassification),
}

spec_path, folder, in_path, out_path = sys.argv[1:5]
spec = json.load(open(spec_path))
t = load_file(in_path)
num_labels = spec.get("num_labels", 3)
config_cls, bare_cls, clf_cls = CLASSES[spec["model_type"]]

if not os.path.exists(os.path.join(folder, "config.json")):
    torch.manual_seed(spec.get("seed", 0))
    config = config_cls(**spec["config"], num_labels=num_labels)
    built = (bare_cls if spec.get("bare") else clf_cls)(config)
    std = spec.get("std", 0.2)
    with torch.no_grad():
        for name, p in built.named_parameters():
            if "norm" in name and name.endswith("weight") or "lambda1" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, std)
    built.save_pretrained(folder, safe_serialization=True)
    if spec.get("spelling") == "modules":
        state = {k: v.contiguous() for k, v in built.state_dict().items()}
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})

interpolate = {"interpolate_pos_encoding": True} if spec["model_type"] == "vit" else {}
out = {}
if "init_seed" in t:
    torch.manual_seed(int(t["init_seed"].item()))
    fresh = clf_cls.from_pretrained(folder, num_labels=num_labels)
    out["init.weight"] = fresh.classifier.weight.detach()
    out["init.bias"] = fresh.classifier.bias.detach()

model = bare_cls.from_pretrained(folder).eval()
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

names = sorted(k for k in t if k.startswith("pixel_values."))
clf = None
if "classifier.weight" in t or not spec.get("bare", True):
    clf = clf_cls.from_pretrained(folder, num_labels=num_labels).eval()
    if "classifier.weight" in t:
        with torch.no_grad():
            clf.classifier.weight.copy_(t["classifier.weight"])
            clf.classifier.bias.copy_(t["classifier.bias"])
for key in names:
    n = key[len("pixel_values."):]
    pixel_values = t[key]
    hidden = model(pixel_values=pixel_values, **interpolate).last_hidden_state
    out[f"hidden.{n}"] = hidden.detach()
    if f"gy.{n}" in t:
        (hidden * t[f"gy.{n}"]).sum().backward()
        for path, ps in leaves.items():
            for name, p in ps.items():
                out[f"grad.{path}.{name}"] = p.grad
        for name in spec.get("param_grads", []):
            out[f"grad.param.{name}"] = model.get_parameter(name).grad
    if clf is not None:
        with torch.no_grad():
            out[f"logits.{n}"] = clf(pixel_values=pixel_values, **interpolate).logits
save_file({k: v.contiguous() for k, v in out.items()}, out_path)
