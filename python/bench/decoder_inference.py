"""Decoder inference with transformers (+ PEFT): the Python side of `flexlora bench-inference`.

Usage: decoder_inference.py REQUESTS.json RESULT.json
REQUESTS (written by flexlora): {"model": decoder folder, "adapter": PEFT LoRA folder,
"threads", "new_tokens", "prompts": [[token ids]], "questions": [{"task", "row",
"contexts": [[ids] per choice], "continuations": [[ids] per choice]}]}

For the base model (LlamaForCausalLM, float32) and the same model with the PEFT adapter applied
(PeftModel, unmerged), under torch.inference_mode():
- generation as a transformers user runs it: `generate` greedy, batch 1, exactly new_tokens
  tokens (no end-of-sequence stop, as flexlora's side), key/value cache on;
- scoring as a transformers user writes it: each question's choices as one right-padded batch
  of context + continuation, one forward, the continuation tokens' log-probabilities summed.
Writes {"side": "transformers", "variants": [{"variant", "generate_seconds", "generated",
"score_seconds", "logprobs"}]} (model loading is not timed).
"""
import json
import sys
import time

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

requests = json.load(open(sys.argv[1]))
torch.set_num_threads(requests["threads"])


def load(adapter):
    model = AutoModelForCausalLM.from_pretrained(requests["model"], dtype=torch.float32)
    if adapter:
        model = PeftModel.from_pretrained(model, requests["adapter"])
    model.eval()
    # No stop token: every prompt gets exactly new_tokens tokens, as on flexlora's side.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def generate(model):
    out = []
    for prompt in requests["prompts"]:
        ids = torch.tensor([prompt])
        tokens = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=requests["new_tokens"],
            do_sample=False,
            use_cache=True,
        )
        out.append(tokens[0, len(prompt):].tolist())
    return out


def score(model):
    out = []
    for q in requests["questions"]:
        seqs = [c + k for c, k in zip(q["contexts"], q["continuations"])]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        sums = []
        for i, (c, k) in enumerate(zip(q["contexts"], q["continuations"])):
            # Position t predicts token t + 1.
            positions = torch.arange(len(c) - 1, len(c) + len(k) - 1)
            sums.append(logp[i, positions, torch.tensor(k)].double().sum().item())
        out.append(sums)
    return out


variants = []
for variant in ["base", "lora"]:
    model = load(variant == "lora")
    with torch.inference_mode():
        started = time.perf_counter()
        generated = generate(model)
        generate_seconds = time.perf_counter() - started
        started = time.perf_counter()
        logprobs = score(model)
        score_seconds = time.perf_counter() - started
    variants.append(
        {
            "variant": variant,
            "generate_seconds": generate_seconds,
            "generated": generated,
            "score_seconds": score_seconds,
            "logprobs": logprobs,
        }
    )
    del model

with open(sys.argv[2], "w") as f:
    json.dump({"side": "transformers", "variants": variants}, f)
