"""Golden chat-template renderings and a chat generation from transformers (tests/lm_chat.rs).

Usage: python python/golden/chat_template.py IN.json OUT.json

IN.json: {"folder": decoder folder,
          "conversations": [{"messages": [{"role", "content"}, ...],
                             "add_generation_prompt": bool}, ...],
          "generate": {"messages": [...], "max_new_tokens": n} (optional)}
OUT.json: {"texts": [apply_chat_template(tokenize=False) per conversation],
           "ids": [apply_chat_template(tokenize=True) per conversation],
           "generated": text of greedy `generate` on the chat prompt (when asked)}
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def token_ids(encoded):
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list.
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    return [int(i) for i in encoded]


def main():
    spec = json.load(open(sys.argv[1]))
    tok = AutoTokenizer.from_pretrained(spec["folder"])
    out = {"texts": [], "ids": []}
    for conv in spec["conversations"]:
        gen = conv["add_generation_prompt"]
        out["texts"].append(
            tok.apply_chat_template(conv["messages"], tokenize=False, add_generation_prompt=gen)
        )
        out["ids"].append(
            token_ids(
                tok.apply_chat_template(conv["messages"], tokenize=True, add_generation_prompt=gen)
            )
        )
    if "generate" in spec:
        g = spec["generate"]
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(spec["folder"], torch_dtype=torch.float32)
        model.eval()
        ids = token_ids(
            tok.apply_chat_template(g["messages"], tokenize=True, add_generation_prompt=True)
        )
        eos = [model.generation_config.eos_token_id, tok.eos_token_id]
        eos = sorted({e for x in eos for e in (x if isinstance(x, list) else [x]) if e is not None})
        with torch.no_grad():
            result = model.generate(
                torch.tensor([ids]),
                max_new_tokens=g["max_new_tokens"],
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos[0],
            )
        out["generated"] = tok.decode(result[0, len(ids):], skip_special_tokens=True)
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
