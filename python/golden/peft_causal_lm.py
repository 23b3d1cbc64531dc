"""Golden logits from Python PEFT and transformers for decoder adapters exported here and decoder
folders merged here.

Usage: peft_causal_lm.py SPEC.json IN.safetensors OUT.safetensors
SPEC: {"jobs": [job, ...]} with each job either
  {"name": N, "base": FOLDER, "adapter": DIR}: transformers' LlamaForCausalLM from the base
      folder (float32) with the PEFT adapter loaded by PeftModel.from_pretrained; every tensor of
      adapter_model.safetensors must arrive in the model unchanged, and the adapter config must
      say task_type CAUSAL_LM, or
  {"name": N, "merged": FOLDER}: AutoModelForCausalLM on a merged folder, without PEFT (no
      missing or unexpected weights allowed), or
  {"name": N, "base": FOLDER}: the base model alone.
IN: input_ids [batch, tokens] (int64). OUT: logits.N [batch, tokens, vocab] per job.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

spec_path, in_path, out_path = sys.argv[1:4]
spec = json.load(open(spec_path))
input_ids = load_file(in_path)["input_ids"]
out = {}

for job in spec["jobs"]:
    name = job["name"]
    if "merged" in job:
        model, info = AutoModelForCausalLM.from_pretrained(
            job["merged"], torch_dtype=torch.float32, output_loading_info=True
        )
        bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if bad:
            raise SystemExit(f"{name}: loading {job['merged']}: {bad}")
    else:
        model = AutoModelForCausalLM.from_pretrained(job["base"], torch_dtype=torch.float32)
        if "adapter" in job:
            from peft import PeftModel, get_peft_model_state_dict

            config = json.load(open(os.path.join(job["adapter"], "adapter_config.json")))
            if config.get("task_type") != "CAUSAL_LM":
                raise SystemExit(f"{name}: task_type {config.get('task_type')!r}, expected CAUSAL_LM")
            model = PeftModel.from_pretrained(model, job["adapter"])
            loaded = get_peft_model_state_dict(model)
            saved = load_file(os.path.join(job["adapter"], "adapter_model.safetensors"))
            if set(loaded) != set(saved):
                raise SystemExit(f"{name}: keys differ: {sorted(set(loaded) ^ set(saved))[:6]}")
            for k, v in saved.items():
                if not torch.equal(loaded[k].cpu(), v):
                    raise SystemExit(f"{name}: {k} did not load unchanged")
    model.eval()
    with torch.no_grad():
        out[f"logits.{name}"] = model(input_ids=input_ids).logits.float()
save_file({k: v.contiguous() for k, v in out.items()}, out_path)
