"""Adapters trained for a few steps by Python PEFT on a LLaMA-family decoder: the golden adapters
of the decoder import test.

Usage: peft_causal_lm_train.py SPEC.json IN.safetensors OUT.safetensors
SPEC: {"base": FOLDER, "texts": [...], "steps": int, "max_new_tokens": int, "out": DIR}
Trains LlamaForCausalLM(base) (float32) with the causal-LM loss on the texts and saves with
save_pretrained under DIR:
  lora_uniform: LORA, r 4, alpha 8, on all seven projections (one rank and one scale);
  lora_patterns: LORA, r 4, alpha 8, use_rslora, with rank_pattern and alpha_pattern, on the
      attention projections and up_proj.
IN: input_ids [1, tokens] (int64). OUT: for each adapter, reloaded from DIR with
PeftModel.from_pretrained: logits.<name> on input_ids and generated.<name>, the greedy
continuation of input_ids (max_new_tokens tokens, or fewer at an end-of-sequence token).
"""
import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

spec_path, in_path, out_path = sys.argv[1:4]
spec = json.load(open(spec_path))
input_ids = load_file(in_path)["input_ids"]
tok = AutoTokenizer.from_pretrained(spec["base"])
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
batch = tok(spec["texts"], padding=True, return_tensors="pt")
labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)

configs = {
    "lora_uniform": LoraConfig(
        task_type="CAUSAL_LM",
        r=4,
        lora_alpha=8,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ),
    "lora_patterns": LoraConfig(
        task_type="CAUSAL_LM",
        r=4,
        lora_alpha=8,
        use_rslora=True,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
        rank_pattern={"model.layers.0.self_attn.q_proj": 6, "layers.3.mlp.up_proj": 2},
        alpha_pattern={"layers.1.self_attn.v_proj": 3},
    ),
}
out = {}
for name, config in configs.items():
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(spec["base"], torch_dtype=torch.float32)
    model = get_peft_model(base, config)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(spec["steps"]):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    folder = os.path.join(spec["out"], name)
    model.save_pretrained(folder, safe_serialization=True)

    base = AutoModelForCausalLM.from_pretrained(spec["base"], torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, folder)
    model.eval()
    with torch.no_grad():
        out[f"logits.{name}"] = model(input_ids=input_ids).logits.float()
        full = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=spec["max_new_tokens"],
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    out[f"generated.{name}"] = full[0, input_ids.shape[1]:].contiguous()
save_file({k: v.contiguous() for k, v in out.items()}, out_path)
