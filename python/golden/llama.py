"""Golden values for LLaMA-family decoders (transformers' LlamaForCausalLM): logits, adapter
gradients and greedy generation, on random-initialised models or on a real checkpoint folder.

Usage: llama.py SPEC.json FOLDER IN.safetensors OUT.safetensors
SPEC: {"config": {LlamaConfig fields}, "seed": int, "std": float, "generate": int,
       "score": [{"prompt": str, "choices": [str, ...],
                  "harness": bool, "contexts": [str, ...]}, ...]}
  When FOLDER has no config.json yet, a LlamaForCausalLM is built from "config" with torch seed
  "seed", every weight redrawn from N(0, std^2) (RMSNorm scales from U(0.5, 1.5)) so that every
  term moves the output, and saved there with save_pretrained. The model is read back from
  FOLDER (float32, eager attention).
IN: input_ids.N [batch, tokens] (int64) for any number of N, optionally attention_mask.N;
  optionally, for every adapted module path M (relative to the decoder, e.g.
  layers.0.self_attn.q_proj): adapter.M.P, adapter.M.lam, adapter.M.mask, adapter.M.Q,
  adapter.M.scale (added to that projection's output as s ((x Q^T) * (lam * mask)) P^T), and
  gy.N (an upstream gradient of logits.N, for one N), which asks for the adapters' gradients.
OUT: logits.N [batch, tokens, vocab]; grad.M.{P,lam,Q} when gy.N is given; with "generate": G
  in SPEC, greedy.N and greedy_nocache.N: the G tokens greedy decoding appends to each row of
  input_ids.N (batch 1 each), with and without the KV cache; with "score" (FOLDER must hold a
  tokenizer), score.K [choices, 3]: for each choice of question K, the summed log-probability
  of its tokens after the prompt, its token count and its length in UTF-8 bytes (lm-evaluation-harness
  style: prompt and choice are tokenized apart, the prompt with the tokenizer's special tokens,
  the choice without, and concatenated). With "harness": true, a question is encoded as
  lm-evaluation-harness's HFLM encodes a (context, continuation) request (`_encode_pair`:
  trailing whitespace of the context moves to the continuation, the context alone and context +
  continuation are encoded without special tokens, the continuation is the whole's tail), choice
  j's context is contexts[j] when given (WinoGrande) else the prompt, and the length is the
  harness's acc_norm normaliser: characters of the choice without its leading space, or of the
  context when every choice has its own.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

spec_path, folder, in_path, out_path = sys.argv[1:5]
spec = json.load(open(spec_path))
t = load_file(in_path)

if not os.path.exists(os.path.join(folder, "config.json")):
    torch.manual_seed(spec.get("seed", 0))
    built = LlamaForCausalLM(LlamaConfig(**spec["config"]))
    std = spec.get("std", 0.2)
    with torch.no_grad():
        for name, p in built.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, std)
    built.save_pretrained(folder, safe_serialization=True)

model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
out = {}

leaves = {}
for key in t:
    if key.startswith("adapter.") and key.endswith(".P"):
        path = key[len("adapter."):-len(".P")]
        P, lam, Q = (t[f"adapter.{path}.{n}"].clone().requires_grad_(True) for n in ("P", "lam", "Q"))
        mask, s = t[f"adapter.{path}.mask"], t[f"adapter.{path}.scale"].item()
        module = model.model.get_submodule(path)
        base = module.forward

        def forward(x, base=base, P=P, lam=lam, mask=mask, Q=Q, s=s):
            return base(x) + s * ((x @ Q.T) * (lam * mask)) @ P.T

        module.forward = forward
        leaves[path] = {"P": P, "lam": lam, "Q": Q}

for key in sorted(k for k in t if k.startswith("input_ids.")):
    n = key[len("input_ids."):]
    ids = t[key].long()
    mask = t.get(f"attention_mask.{n}")
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    out[f"logits.{n}"] = logits.detach()
    if f"gy.{n}" in t:
        (logits * t[f"gy.{n}"]).sum().backward()
        for path, ps in leaves.items():
            for name, p in ps.items():
                out[f"grad.{path}.{name}"] = p.grad
    if spec.get("generate"):
        g = spec["generate"]
        for label, cache in (("greedy", True), ("greedy_nocache", False)):
            rows = []
            for row in ids:
                with torch.no_grad():
                    gen = model.generate(
                        row[None], max_new_tokens=g, min_new_tokens=g, do_sample=False,
                        use_cache=cache, pad_token_id=0, eos_token_id=None,
                        attention_mask=torch.ones_like(row[None]),
                    )
                rows.append(gen[0, row.shape[0]:])
            out[f"{label}.{n}"] = torch.stack(rows)

if spec.get("score"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    for k, q in enumerate(spec["score"]):
        rows = []
        for j, choice in enumerate(q["choices"]):
            if q.get("harness"):
                context = q["contexts"][j] if q.get("contexts") else q["prompt"]
                n_spaces = len(context) - len(context.rstrip())
                cont_text = context[len(context) - n_spaces:] + choice
                context = context[: len(context) - n_spaces]
                prompt_ids = tok.encode(context, add_special_tokens=False)
                whole_ids = tok.encode(context + cont_text, add_special_tokens=False)
                cont = whole_ids[len(prompt_ids):]
                norm = len(q["contexts"][j]) if q.get("contexts") else len(choice) - 1
            else:
                prompt_ids = tok(q["prompt"])["input_ids"]
                cont = tok(choice, add_special_tokens=False)["input_ids"]
                norm = len(choice.encode("utf-8"))
            whole = prompt_ids + cont
            ids = torch.tensor([whole])
            with torch.no_grad():
                logp = model(input_ids=ids).logits.log_softmax(-1)[0]
            start = len(whole) - len(cont)
            total = sum(logp[start - 1 + i, c].item() for i, c in enumerate(cont))
            rows.append([total, len(cont), norm])
        out[f"score.{k}"] = torch.tensor(rows, dtype=torch.float64)

save_file({k: v.contiguous() for k, v in out.items()}, out_path)
