"""Golden embeddings for `flexlora embed`, by transformers, from a model folder.

Usage: embed.py SPEC.json IN.safetensors OUT.safetensors
SPEC: {"folder": str, "texts": [...], "max_length": int}   (text encoders)
   or {"folder": str, "image_size": int | null}              (ViT / DINOv2)
Texts: AutoTokenizer and AutoModel from the folder, the last hidden states mean-pooled over the
  attention mask (sentence-transformers' mean pooling).
Images: IN holds pixels.N, the 8-bit grey images (uint8 [height, width]), for N = 0, 1, ...
  Each is preprocessed as flexlora documents it, written here independently with torch: scaled
  by 1/255, resized to size x size (bilinear, align_corners=False, no antialiasing), repeated to
  three channels, normalised with preprocessor_config.json's image_mean / image_std (else
  ImageNet's for DINOv2, 0.5 for ViT). size: "image_size", else preprocessor_config.json's
  crop_size, else its size, else config.json's image_size. The model is AutoModel (ViTModel
  with its pooler, Dinov2Model); the output is its pooler_output.
OUT: embeddings [n, hidden]; for images also pixel_values.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

spec_path, in_path, out_path = sys.argv[1:4]
spec = json.load(open(spec_path))
t = load_file(in_path)
folder = spec["folder"]
model = AutoModel.from_pretrained(folder).eval()
out = {}


def side(s):
    if isinstance(s, int):
        return s
    if "height" in s:
        return min(s["height"], s["width"])
    return s["shortest_edge"]


with torch.no_grad():
    if "texts" in spec:
        tok = AutoTokenizer.from_pretrained(folder)
        enc = tok(spec["texts"], padding=True, truncation=True, max_length=spec["max_length"],
                  return_tensors="pt")
        inputs = {k: enc[k] for k in ("input_ids", "attention_mask")}
        hidden = model(**inputs).last_hidden_state
        m = inputs["attention_mask"].unsqueeze(-1).float()
        out["embeddings"] = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    else:
        config = json.load(open(os.path.join(folder, "config.json")))
        pre_path = os.path.join(folder, "preprocessor_config.json")
        pre = json.load(open(pre_path)) if os.path.exists(pre_path) else {}
        dinov2 = config["model_type"] == "dinov2"
        mean = pre.get("image_mean", [0.485, 0.456, 0.406] if dinov2 else [0.5] * 3)
        std = pre.get("image_std", [0.229, 0.224, 0.225] if dinov2 else [0.5] * 3)
        size = spec.get("image_size") or side(pre.get("crop_size") or pre.get("size")
                                              or config["image_size"])
        images = []
        for n in range(len(t)):
            x = t[f"pixels.{n}"].float()[None, None] / 255.0
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=False)
            images.append(x)
        x = torch.cat(images).expand(-1, 3, -1, -1)
        mean = torch.tensor(mean).view(1, 3, 1, 1)
        std = torch.tensor(std).view(1, 3, 1, 1)
        pixel_values = (x - mean) / std
        kwargs = {} if dinov2 else {"interpolate_pos_encoding": True}
        out["embeddings"] = model(pixel_values=pixel_values, **kwargs).pooler_output
        out["pixel_values"] = pixel_values

save_file({k: v.contiguous() for k, v in out.items()}, out_path)
