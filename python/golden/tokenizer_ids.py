"""Golden token ids by transformers' tokenizers, for tokenizer parity tests.
(Not named tokenize.py: a script's folder comes first on sys.path, and that name would shadow the
standard library's tokenize module, which torch imports.)

Usage: tokenizer_ids.py FOLDER SPEC.json IN.safetensors OUT.safetensors
SPEC: {"texts": [...], "pairs": [...] | null, "max_length": int, "loader": "file" | "auto"}
  loader "file" (default): transformers' generic fast tokenizer (PreTrainedTokenizerFast) on
    FOLDER/tokenizer.json exactly as the file defines it, special tokens from the folder's
    configs. This is what flexlora's TextTokenizer is meant to reproduce.
  loader "auto": AutoTokenizer.from_pretrained(FOLDER), i.e. the class named by the folder's
    tokenizer_config.json (DebertaV2Tokenizer for the DeBERTa-v3 folder). In transformers 5 that
    class keeps the file's vocabulary and template but builds its own normalizer (whitespace
    runs, NFC, right strip) instead of the file's sentencepiece charsmap (NFKC), so it can differ.
IN: unused (the test harness always passes an input file).
OUT: input_ids, attention_mask, token_type_ids (int64, [batch, longest]), padded to the batch's
longest sequence with the tokenizer's pad token, truncated longest-first to max_length.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

folder, spec_path, _in_path, out_path = sys.argv[1:5]
spec = json.load(open(spec_path, encoding="utf-8"))
loader = spec.get("loader", "file")
if loader == "file":
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
elif loader == "auto":
    tok = AutoTokenizer.from_pretrained(folder)
else:
    sys.exit(f"tokenizer_ids.py: unknown loader {loader!r} (file | auto)")
if tok.pad_token is None:
    sys.exit(f"tokenizer_ids.py: the tokenizer of {os.path.abspath(folder)} has no pad token")

args = [spec["texts"]] + ([spec["pairs"]] if spec.get("pairs") is not None else [])
enc = tok(
    *args,
    padding=True,
    truncation=True,
    max_length=spec["max_length"],
    return_token_type_ids=True,
    return_attention_mask=True,
    return_tensors="pt",
)
out = {k: enc[k].to(torch.int64).contiguous() for k in ("input_ids", "attention_mask", "token_type_ids")}
save_file(out, out_path)
