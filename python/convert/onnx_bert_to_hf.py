#!/usr/bin/env python3
"""Convert a BERT encoder exported to ONNX into a Hugging Face ``BertModel`` folder.

Usage (with the project venv, see scripts/setup):

    .venv/bin/python python/convert/onnx_bert_to_hf.py SRC.onnx [--tokenizer-from DIR_OR_FILE] OUT_DIR

Writes OUT_DIR/ with
  config.json              BertConfig (model_type "bert"), sizes read from the graph
  model.safetensors        HF tensor names without a "bert." prefix
                           (embeddings.word_embeddings.weight, encoder.layer.N.attention.self.query.weight, ...)
                           Linear weights in PyTorch's [out, in] layout (ONNX MatMul stores [in, out])
  tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json

How the weights are found: the graph is traced, not trusted by name. Starting at the word
embedding Gather on ``input_ids``, the embedding sum and its LayerNormalization are followed; then
for each layer the three MatMuls reading the hidden state are classified as query / key / value by
where they end up (scores MatMul input 0 / input 1 / context MatMul after Softmax), the attention
output projection, the residual Adds, both LayerNorms, the intermediate MatMul, the activation (Erf
-> "gelu") and the output MatMul are followed in turn. Initializers may thus carry HF names (with
any prefix, e.g. ``model.0.auto_model.``) or anonymous ones (``onnx::MatMul_470``). An initializer
whose name looks like an HF name but disagrees with its traced role, or an exporter node name that
names a different layer/role, is an error.

Verification (the conversion fails, and nothing is written to OUT_DIR, unless it holds): the new
folder is loaded with ``transformers.BertModel.from_pretrained`` and ``AutoTokenizer``; real
sentences (one alone, then a padded batch of different lengths) are run through it and through
onnxruntime on the original ONNX with the same input_ids / attention_mask (/ token_type_ids when the
graph takes them); last_hidden_state must agree to MAX_ABS_DIFF (and a mean-pooled graph output, if
any, must agree with transformers' masked mean pooling). The ``tokenizers`` library (which the Rust
``tokenizers`` crate mirrors) must give the same ids as AutoTokenizer.

Atomic: everything is written into a temporary sibling folder ``.tmp-convert-*`` and renamed to
OUT_DIR only after the verification passed.

Tokenizer source (--tokenizer-from): a folder holding tokenizer.json and/or vocab.txt (plus
optionally tokenizer_config.json, special_tokens_map.json, copied unchanged), or a single
tokenizer.json or vocab.txt file. Without it, the folder of SRC.onnx is searched. Its vocabulary
size must equal the rows of the word-embedding matrix.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque

import numpy as np

MAX_ABS_DIFF = 1e-4
TMP_PREFIX = ".tmp-convert-"
PREFIX = "[onnx-bert-to-hf]"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")

SENTENCES_SINGLE = ["The film is a charming, funny and often moving look at two lives on the road."]
SENTENCES_BATCH = [
    "A cat sat quietly on the warm windowsill.",
    "Despite its impressive cast, the movie never quite decides what it wants to be, and the "
    "final act drags on far too long.",
    "Paris is the capital of France.",
    "unbelievably dull",
]


def log(msg: str) -> None:
    print(f"{PREFIX} {msg}", flush=True)


class ConvertError(Exception):
    """An expected failure: reported as one message, exit status 1."""


# --------------------------------------------------------------------------------------------
# Graph access


class Graph:
    def __init__(self, model):
        import onnx
        from onnx import numpy_helper

        self.onnx = onnx
        self.model = model
        g = model.graph
        self.g = g
        self.inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.consts: dict = {}
        self.producer: dict = {}
        self.consumers: dict = defaultdict(list)
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
            for i, name in enumerate(n.input):
                if name:
                    self.consumers[name].append((n, i))
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
                    elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                        self.consts[n.output[0]] = np.array(onnx.helper.get_attribute_value(a))
        self.inputs = [i.name for i in g.input if i.name not in self.inits]
        self.outputs = [o.name for o in g.output]

    def const(self, name: str):
        if name in self.inits:
            return self.inits[name]
        return self.consts.get(name)

    def is_init(self, name: str) -> bool:
        return name in self.inits

    def attr(self, node, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return self.onnx.helper.get_attribute_value(a)
        return default

    def users(self, tensor: str, op: str | None = None) -> list:
        return [(n, i) for n, i in self.consumers.get(tensor, []) if op is None or n.op_type == op]

    def ancestors_ops(self, tensor: str, limit: int = 64) -> set:
        """Op types of the nodes upstream of tensor (bounded breadth-first walk)."""
        seen, ops, queue = set(), set(), deque([tensor])
        while queue and len(seen) < limit:
            t = queue.popleft()
            n = self.producer.get(t)
            if n is None or id(n) in seen:
                continue
            seen.add(id(n))
            ops.add(n.op_type)
            queue.extend(i for i in n.input if i)
        return ops

    def upstream_consts(self, tensor: str, limit: int = 64) -> list:
        """Names of initializers/Constant outputs upstream of tensor (including itself)."""
        out, seen, queue = [], set(), deque([tensor])
        while queue and len(seen) < limit:
            t = queue.popleft()
            if t in seen:
                continue
            seen.add(t)
            if self.const(t) is not None:
                out.append(t)
                continue
            n = self.producer.get(t)
            if n is not None:
                queue.extend(i for i in n.input if i)
        return out


def weight_matmul(G: Graph, node) -> bool:
    return node.op_type == "MatMul" and G.is_init(node.input[1]) and G.inits[node.input[1]].ndim == 2


def bias_add(G: Graph, tensor: str, what: str):
    """The Add that adds a 1-D initializer to tensor: (output, bias name)."""
    for n, i in G.users(tensor, "Add"):
        other = n.input[1 - i]
        if G.is_init(other) and G.inits[other].ndim == 1:
            return n.output[0], other
    raise ConvertError(f"{what}: no bias Add after {tensor!r}")


def residual_layernorm(G: Graph, tensor: str, residual: str, what: str):
    """tensor + residual -> LayerNormalization: (output, weight name, bias name, epsilon)."""
    for n, i in G.users(tensor, "Add"):
        if n.input[1 - i] != residual:
            continue
        lns = G.users(n.output[0], "LayerNormalization")
        if len(lns) != 1:
            break
        ln = lns[0][0]
        if len(ln.input) < 3 or not (G.is_init(ln.input[1]) and G.is_init(ln.input[2])):
            raise ConvertError(f"{what}: LayerNormalization {ln.name!r} lacks weight/bias initializers")
        if G.attr(ln, "axis", -1) != -1:
            raise ConvertError(f"{what}: LayerNormalization {ln.name!r} is not over the last axis")
        return ln.output[0], ln.input[1], ln.input[2], float(G.attr(ln, "epsilon", 1e-5))
    raise ConvertError(
        f"{what}: expected Add({tensor!r}, residual {residual!r}) followed by one LayerNormalization "
        "(decomposed LayerNorms are not supported)"
    )


def walk_forward(G: Graph, tensor: str, stop, through: set, what: str):
    """Breadth-first over consumers whose op is in `through`; return [(node, input index, ops seen)] of
    the first nodes satisfying stop(node, idx)."""
    found, seen_ops, seen = [], set(), set()
    queue = deque([tensor])
    while queue:
        t = queue.popleft()
        for n, i in G.consumers.get(t, []):
            if stop(n, i):
                found.append((n, i))
            elif n.op_type in through and id(n) not in seen:
                seen.add(id(n))
                seen_ops.add(n.op_type)
                queue.extend(n.output)
    if not found:
        raise ConvertError(f"{what}: could not follow the graph from {tensor!r}")
    return found, seen_ops


# --------------------------------------------------------------------------------------------
# Tracing a BERT encoder


HF_NAME_RE = re.compile(r"(embeddings\.[A-Za-z_.]+|encoder\.layer\.\d+\.[A-Za-z_.]+)$")
NODE_ROLE_RE = re.compile(r"layer\.(\d+)/(attention/self/(?:query|key|value)|attention/output/dense|"
                          r"intermediate/dense|output/dense)/")


def trace_bert(G: Graph):
    """Return (params, cfg, info): params maps HF name -> (array in HF layout, onnx initializer name,
    how it was derived)."""
    params: dict = {}
    info: dict = {"node_name_checks": 0}

    def put(hf: str, onnx_name: str, transpose: bool = False):
        arr = G.inits[onnx_name]
        arr = np.ascontiguousarray(arr.T if transpose else arr).astype(np.float32, copy=False)
        if arr.dtype != np.float32:
            raise ConvertError(f"{hf}: initializer {onnx_name!r} is {arr.dtype}, expected float32")
        params[hf] = (arr, onnx_name, "transposed" if transpose else "as is")

    def check_node_name(node, layer: int, role: str):
        m = NODE_ROLE_RE.search(node.name or "")
        if not m:
            return
        if int(m.group(1)) != layer or m.group(2) != role:
            raise ConvertError(
                f"traced MatMul {node.name!r} as layer {layer} {role}, but its name says layer "
                f"{m.group(1)} {m.group(2)}"
            )
        info["node_name_checks"] += 1

    # ---- embeddings
    int_inputs = G.inputs
    if "input_ids" not in int_inputs:
        raise ConvertError(f"the graph has no 'input_ids' input (inputs: {int_inputs})")
    word = [n for n, i in G.users("input_ids", "Gather") if i == 1 and G.is_init(n.input[0])]
    if len(word) != 1:
        raise ConvertError("expected exactly one Gather of an embedding table by input_ids")
    word = word[0]
    put("embeddings.word_embeddings.weight", word.input[0])
    vocab, hidden = G.inits[word.input[0]].shape

    t = word.output[0]
    emb_ln = None
    others = []
    token_type_const = None
    for _ in range(4):
        adds = G.users(t, "Add")
        lns = G.users(t, "LayerNormalization")
        if lns and not adds:
            emb_ln = lns[0][0]
            break
        if len(adds) != 1:
            raise ConvertError(f"embeddings: expected one Add after {t!r}")
        n, i = adds[0]
        other = n.input[1 - i]
        prod = G.producer.get(other)
        if prod is None or prod.op_type != "Gather" or not G.is_init(prod.input[0]):
            raise ConvertError(f"embeddings: the term added to {t!r} is not an embedding-table Gather")
        others.append(prod)
        t = n.output[0]
    if emb_ln is None:
        raise ConvertError("embeddings: no LayerNormalization after the embedding sum")
    for prod in others:
        table, idx = prod.input[0], prod.input[1]
        if "token_type_ids" in G.inputs and idx == "token_type_ids":
            role = "token_type"
        elif "position_ids" in G.inputs and idx == "position_ids":
            role = "position"
        else:
            # Indices computed from a buffer: arange -> positions, all zeros -> token types.
            bufs = [c for c in G.upstream_consts(idx) if G.const(c).size >= 16]
            if len(bufs) != 1:
                raise ConvertError(f"embeddings: cannot tell what indexes table {table!r}")
            buf = G.const(bufs[0]).reshape(-1)
            if np.array_equal(buf, np.arange(buf.size)):
                role = "position"
            elif not buf.any():
                role = "token_type"
                token_type_const = bufs[0]
            else:
                raise ConvertError(f"embeddings: table {table!r} is indexed by an unknown buffer")
        hf = f"embeddings.{role}_embeddings.weight"
        if hf in params:
            raise ConvertError(f"embeddings: two tables traced as {role}")
        put(hf, table)
    for role in ("position", "token_type"):
        if f"embeddings.{role}_embeddings.weight" not in params:
            raise ConvertError(f"embeddings: no {role} embedding table found")
    if emb_ln.input[0] != t:
        raise ConvertError("embeddings: LayerNorm does not read the embedding sum")
    put("embeddings.LayerNorm.weight", emb_ln.input[1])
    put("embeddings.LayerNorm.bias", emb_ln.input[2])
    eps = {float(G.attr(emb_ln, "epsilon", 1e-5))}
    info["token_type_ids"] = ("graph input" if "token_type_ids" in G.inputs
                              else f"constant zeros buffer {token_type_const!r} (no graph input)")

    # ---- encoder layers
    h = emb_ln.output[0]
    heads_seen, inter_sizes, acts = set(), set(), set()
    L = 0
    through_qkv = {"Reshape", "Transpose", "Mul", "Div", "Squeeze", "Unsqueeze", "Cast"}
    while True:
        mms = [n for n, i in G.users(h, "MatMul") if i == 0 and weight_matmul(G, n)]
        if not mms:
            break
        what = f"layer {L}"
        if len(mms) != 3:
            raise ConvertError(f"{what}: expected 3 projection MatMuls reading the hidden state, found {len(mms)}")
        roles: dict = {}
        for mm in mms:
            proj, b = bias_add(G, mm.output[0], what)
            hits, _ = walk_forward(
                G, proj,
                lambda n, i: n.op_type == "MatMul" and not G.is_init(n.input[0]) and not G.is_init(n.input[1]),
                through_qkv, what)
            if len(hits) != 1:
                raise ConvertError(f"{what}: projection {mm.name!r} reaches {len(hits)} attention MatMuls")
            att, idx = hits[0]
            src_op = G.producer.get(att.input[0])
            while src_op is not None and src_op.op_type in ("Cast", "Dropout", "Identity"):
                src_op = G.producer.get(src_op.input[0])
            if src_op is not None and src_op.op_type == "Softmax":
                if idx != 1:
                    raise ConvertError(f"{what}: value projection {mm.name!r} enters the context MatMul as input 0")
                role = "value"
            else:
                role = "query" if idx == 0 else "key"
            if role in roles:
                raise ConvertError(f"{what}: two projections traced as {role}")
            roles[role] = (mm, b, att, proj)
        if set(roles) != {"query", "key", "value"}:
            raise ConvertError(f"{what}: traced roles {sorted(roles)}")
        if roles["query"][2] is not roles["key"][2]:
            raise ConvertError(f"{what}: query and key do not meet in one scores MatMul")
        for role, (mm, b, _, _) in roles.items():
            check_node_name(mm, L, f"attention/self/{role}")
            put(f"encoder.layer.{L}.attention.self.{role}.weight", mm.input[1], transpose=True)
            put(f"encoder.layer.{L}.attention.self.{role}.bias", b)

        # heads: the Reshape of the query projection to [B, S, heads, head_dim]
        q_proj = roles["query"][3]
        rs = [n for n, i in G.users(q_proj, "Reshape") if i == 0]
        heads = None
        if rs:
            shape_t = rs[0].input[1]
            shape = G.const(shape_t)
            if shape is None and G.producer.get(shape_t) is not None and G.producer[shape_t].op_type == "Concat":
                parts = [G.const(x) for x in G.producer[shape_t].input]
                if all(p is not None for p in parts[-2:]):
                    shape = np.concatenate([np.ravel(p) for p in parts[-2:]])
            if shape is not None and len(np.ravel(shape)) >= 2:
                nh, hd = (int(x) for x in np.ravel(shape)[-2:])
                if nh > 0 and hd > 0 and nh * hd == hidden:
                    heads = nh
        if heads is None:
            raise ConvertError(f"{what}: cannot read the number of heads from the query Reshape")
        # the score scale must be 1/sqrt(head_dim)
        scores = roles["query"][2]
        for n, _ in G.users(scores.output[0]):
            c = [G.const(x) for x in n.input if G.const(x) is not None and G.const(x).size == 1]
            if n.op_type in ("Div", "Mul") and c:
                v = float(np.ravel(c[0])[0])
                scale = v if n.op_type == "Div" else 1.0 / v
                if not math.isclose(scale, math.sqrt(hidden // heads), rel_tol=1e-4):
                    raise ConvertError(f"{what}: attention scale {scale} != sqrt(head_dim={hidden // heads})")
        heads_seen.add(heads)

        # attention output projection + residual + LayerNorm
        ctx = roles["value"][2]
        hits, _ = walk_forward(G, ctx.output[0], lambda n, i: weight_matmul(G, n) and i == 0,
                               {"Transpose", "Reshape"}, what)
        if len(hits) != 1:
            raise ConvertError(f"{what}: expected one attention output MatMul")
        dense = hits[0][0]
        check_node_name(dense, L, "attention/output/dense")
        put(f"encoder.layer.{L}.attention.output.dense.weight", dense.input[1], transpose=True)
        out, b = bias_add(G, dense.output[0], what)
        put(f"encoder.layer.{L}.attention.output.dense.bias", b)
        h_attn, lw, lb, e = residual_layernorm(G, out, h, what + " attention")
        put(f"encoder.layer.{L}.attention.output.LayerNorm.weight", lw)
        put(f"encoder.layer.{L}.attention.output.LayerNorm.bias", lb)
        eps.add(e)

        # feed-forward
        inter = [n for n, i in G.users(h_attn, "MatMul") if i == 0 and weight_matmul(G, n)]
        if len(inter) != 1:
            raise ConvertError(f"{what}: expected one intermediate MatMul")
        inter = inter[0]
        check_node_name(inter, L, "intermediate/dense")
        put(f"encoder.layer.{L}.intermediate.dense.weight", inter.input[1], transpose=True)
        inter_sizes.add(G.inits[inter.input[1]].shape[1])
        x, b = bias_add(G, inter.output[0], what)
        put(f"encoder.layer.{L}.intermediate.dense.bias", b)
        hits, act_ops = walk_forward(G, x, lambda n, i: weight_matmul(G, n),
                                     {"Div", "Mul", "Add", "Erf", "Tanh", "Pow", "Sigmoid", "Relu", "Gelu"}, what)
        outs = {id(n): n for n, _ in hits}
        if len(outs) != 1:
            raise ConvertError(f"{what}: expected one output MatMul after the activation")
        if "Erf" in act_ops or "Gelu" in act_ops:
            act = "gelu"
        elif "Tanh" in act_ops:
            act = "gelu_new"
        elif act_ops == {"Relu"}:
            act = "relu"
        else:
            raise ConvertError(f"{what}: unrecognised activation made of {sorted(act_ops)}")
        acts.add(act)
        o = next(iter(outs.values()))
        check_node_name(o, L, "output/dense")
        put(f"encoder.layer.{L}.output.dense.weight", o.input[1], transpose=True)
        out, b = bias_add(G, o.output[0], what)
        put(f"encoder.layer.{L}.output.dense.bias", b)
        h, lw, lb, e = residual_layernorm(G, out, h_attn, what + " output")
        put(f"encoder.layer.{L}.output.LayerNorm.weight", lw)
        put(f"encoder.layer.{L}.output.LayerNorm.bias", lb)
        eps.add(e)
        L += 1

    if L == 0:
        raise ConvertError("no encoder layer found after the embeddings")
    for s, name in ((heads_seen, "head counts"), (inter_sizes, "intermediate sizes"), (acts, "activations"), (eps, "LayerNorm epsilons")):
        if len(s) != 1:
            raise ConvertError(f"layers disagree on {name}: {sorted(s)}")
    eps_v = eps.pop()
    eps_nice = float(f"{eps_v:.6g}")
    if np.float32(eps_nice) == np.float32(eps_v):
        eps_v = eps_nice

    cfg = dict(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        num_hidden_layers=L,
        num_attention_heads=heads_seen.pop(),
        intermediate_size=int(inter_sizes.pop()),
        hidden_act=acts.pop(),
        max_position_embeddings=int(params["embeddings.position_embeddings.weight"][0].shape[0]),
        type_vocab_size=int(params["embeddings.token_type_embeddings.weight"][0].shape[0]),
        layer_norm_eps=eps_v,
    )
    info["last_hidden_state"] = h

    # Name cross-check: an HF-looking initializer name must agree with the traced role.
    by_name = traced = 0
    for hf, (_, oname, _) in params.items():
        m = HF_NAME_RE.search(oname)
        if m:
            if m.group(1) != hf:
                raise ConvertError(f"initializer {oname!r} was traced as {hf!r}: the name disagrees")
            by_name += 1
        else:
            traced += 1
    info["names_agree"], info["names_anonymous"] = by_name, traced
    used = {oname for _, oname, _ in params.values()}
    float_left = [n for n, a in G.inits.items() if n not in used and a.dtype == np.float32 and a.size > 1]
    if float_left:
        raise ConvertError(f"float initializers not mapped to any BertModel tensor: {float_left}")
    return params, cfg, info


# --------------------------------------------------------------------------------------------
# Tokenizer


def gather_tokenizer(src: str | None, onnx_path: str, dst: str) -> str:
    """Copy/derive the tokenizer files into dst; return a description of what was done."""
    if src is None:
        d = os.path.dirname(os.path.abspath(onnx_path))
        if not any(os.path.isfile(os.path.join(d, f)) for f in ("tokenizer.json", "vocab.txt")):
            raise ConvertError(
                f"no tokenizer.json or vocab.txt next to {onnx_path}; pass --tokenizer-from DIR_OR_FILE"
            )
        src = d
    copied = []
    if os.path.isdir(src):
        for f in TOKENIZER_FILES:
            p = os.path.join(src, f)
            if os.path.isfile(p):
                shutil.copyfile(p, os.path.join(dst, f))
                copied.append(f)
    elif os.path.isfile(src) and os.path.basename(src) in ("tokenizer.json", "vocab.txt"):
        shutil.copyfile(src, os.path.join(dst, os.path.basename(src)))
        copied.append(os.path.basename(src))
    else:
        raise ConvertError(f"--tokenizer-from {src}: not a folder, tokenizer.json or vocab.txt")
    if not ({"tokenizer.json", "vocab.txt"} & set(copied)):
        raise ConvertError(f"--tokenizer-from {src}: holds neither tokenizer.json nor vocab.txt")
    derived = []
    tj, vt = os.path.join(dst, "tokenizer.json"), os.path.join(dst, "vocab.txt")
    if not os.path.exists(vt):
        with open(tj, encoding="utf-8") as f:
            model = json.load(f)["model"]
        if model.get("type") != "WordPiece":
            raise ConvertError(f"tokenizer.json has a {model.get('type')} model; a BERT WordPiece one is needed")
        inv = sorted((i, t) for t, i in model["vocab"].items())
        if [i for i, _ in inv] != list(range(len(inv))):
            raise ConvertError("tokenizer.json vocabulary ids are not contiguous")
        with open(vt, "w", encoding="utf-8") as f:
            f.writelines(t + "\n" for _, t in inv)
        derived.append("vocab.txt")
    if not os.path.exists(tj):
        from tokenizers import BertWordPieceTokenizer  # bert-base-uncased style normaliser/template

        BertWordPieceTokenizer(vt, lowercase=True, strip_accents=None, clean_text=True,
                               handle_chinese_chars=True).save(tj)
        derived.append("tokenizer.json")
    if not os.path.exists(os.path.join(dst, "special_tokens_map.json")):
        with open(os.path.join(dst, "special_tokens_map.json"), "w", encoding="utf-8") as f:
            json.dump({"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                       "cls_token": "[CLS]", "mask_token": "[MASK]"}, f)
        derived.append("special_tokens_map.json")
    if not os.path.exists(os.path.join(dst, "tokenizer_config.json")):
        with open(os.path.join(dst, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"do_lower_case": True, "unk_token": "[UNK]", "sep_token": "[SEP]",
                       "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
                       "tokenize_chinese_chars": True, "strip_accents": None,
                       "tokenizer_class": "BertTokenizer", "model_max_length": 512}, f)
        derived.append("tokenizer_config.json")
    return f"copied {', '.join(copied)} from {src}" + (f"; derived {', '.join(derived)}" if derived else "")


# --------------------------------------------------------------------------------------------
# Verification


def verify(out_dir: str, model_bytes: bytes, G: Graph, info: dict, cfg: dict) -> dict:
    import onnxruntime as ort
    import tokenizers
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    res: dict = {}
    t0 = time.monotonic()
    model, load_info = transformers.BertModel.from_pretrained(out_dir, output_loading_info=True)
    model.eval()
    missing = set(load_info.get("missing_keys") or [])
    unexpected = set(load_info.get("unexpected_keys") or [])
    mismatched = load_info.get("mismatched_keys") or []
    if missing - {"pooler.dense.weight", "pooler.dense.bias"} or unexpected or mismatched:
        raise ConvertError(
            f"BertModel.from_pretrained: missing {sorted(missing)}, unexpected {sorted(unexpected)}, "
            f"mismatched {mismatched}"
        )
    res["hf_missing"] = sorted(missing)
    tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    raw = tokenizers.Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    res["tokenizer_class"] = type(tok).__name__
    res["load_s"] = time.monotonic() - t0

    # onnxruntime on the original graph, exposing the traced last hidden state if needed.
    hidden_name = info["last_hidden_state"]
    if hidden_name not in G.outputs:
        import onnx

        m = onnx.load_from_string(model_bytes)
        m.graph.output.append(onnx.helper.make_tensor_value_info(hidden_name, onnx.TensorProto.FLOAT, None))
        model_bytes = m.SerializeToString()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    in_types = {i.name: i.type for i in sess.get_inputs()}
    out_names = [o.name for o in sess.get_outputs()]
    # A float rank-2 output computed from the hidden state with ReduceSum: mean pooling.
    pooled_name = None
    for o in sess.get_outputs():
        if o.name != hidden_name and o.type == "tensor(float)" and len(o.shape) == 2:
            if {"ReduceSum", "Div"} <= G.ancestors_ops(o.name, limit=40) and hidden_name in _upstream(G, o.name):
                pooled_name = o.name
    res["onnx_hidden"], res["onnx_pooled"] = hidden_name, pooled_name

    cases = []
    for label, texts in (("single", SENTENCES_SINGLE), ("padded batch", SENTENCES_BATCH)):
        enc = tok(texts, padding=True, return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        tt = enc.get("token_type_ids")
        tt = np.zeros_like(ids) if tt is None else tt.astype(np.int64)
        # the tokenizers library (as used by the Rust crate) must give the same ids
        for k, text in enumerate(texts):
            e = raw.encode(text)
            got = [i for i, m in zip(e.ids, e.attention_mask) if m]
            want = ids[k][mask[k] == 1].tolist()
            if got != want:
                raise ConvertError(f"tokenizers and AutoTokenizer disagree on {text!r}: {got} vs {want}")
        feeds = {}
        for name, arr in (("input_ids", ids), ("attention_mask", mask), ("token_type_ids", tt)):
            if name in in_types:
                feeds[name] = arr.astype(np.int32) if in_types[name] == "tensor(int32)" else arr
        missing_in = set(in_types) - set(feeds)
        if missing_in:
            raise ConvertError(f"the ONNX graph needs inputs this check does not provide: {sorted(missing_in)}")
        outs = dict(zip(out_names, sess.run(out_names, feeds)))
        with torch.no_grad():
            hf = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                       token_type_ids=torch.from_numpy(tt)).last_hidden_state.numpy()
        ref = outs[hidden_name]
        if ref.shape != hf.shape:
            raise ConvertError(f"{label}: shapes differ: onnx {ref.shape} vs transformers {hf.shape}")
        d_all = float(np.abs(ref - hf).max())
        d_real = float(np.abs(ref - hf)[mask == 1].max())
        case = {"case": label, "shape": list(hf.shape), "lengths": mask.sum(1).tolist(),
                "max_abs_hidden": d_all, "max_abs_hidden_real_tokens": d_real,
                "max_abs_ref": float(np.abs(ref).max())}
        if pooled_name is not None:
            mf = mask[..., None].astype(np.float32)
            pooled = (hf * mf).sum(1) / np.clip(mf.sum(1), 1e-9, None)
            case["max_abs_pooled"] = float(np.abs(outs[pooled_name] - pooled).max())
        cases.append(case)
        log(f"parity {label} {tuple(hf.shape)} lengths {case['lengths']}: last_hidden_state max|diff| "
            f"{d_all:.3e} (real tokens {d_real:.3e}, |ref| max {case['max_abs_ref']:.2f})"
            + (f"; mean-pooled max|diff| {case['max_abs_pooled']:.3e}" if "max_abs_pooled" in case else ""))
    res["cases"] = cases
    worst = max(max(c["max_abs_hidden"], c.get("max_abs_pooled", 0.0)) for c in cases)
    res["worst"] = worst
    if not worst <= MAX_ABS_DIFF:
        raise ConvertError(f"parity FAILED: max abs difference {worst:.3e} > {MAX_ABS_DIFF:g}")
    return res


def _upstream(G: Graph, tensor: str, limit: int = 200) -> set:
    seen, queue = set(), deque([tensor])
    while queue and len(seen) < limit:
        t = queue.popleft()
        if t in seen:
            continue
        seen.add(t)
        n = G.producer.get(t)
        if n is not None:
            queue.extend(i for i in n.input if i)
    return seen


# --------------------------------------------------------------------------------------------


def convert(src: str, tokenizer_from: str | None, out_dir: str) -> None:
    import onnx
    import safetensors.numpy
    import transformers

    t_start = time.monotonic()
    if not os.path.isfile(src):
        raise ConvertError(f"source ONNX not found: {src}")
    with open(src, "rb") as f:
        model_bytes = f.read()
    model = onnx.load_from_string(model_bytes)
    G = Graph(model)
    ins = [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input
           if i.name not in G.inits]
    outs = [(o.name, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]) for o in model.graph.output]
    log(f"{src}: {len(model.graph.node)} nodes, {len(G.inits)} initializers, opset "
        f"{[o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')]}")
    log(f"graph inputs {ins}; outputs {outs}")

    params, cfg, info = trace_bert(G)
    n_params = sum(a.size for a, _, _ in params.values())
    log(f"traced {len(params)} tensors ({n_params:,} parameters): {info['names_agree']} initializer names agree "
        f"with their traced HF role (prefix stripped), {info['names_anonymous']} anonymous names mapped by tracing "
        f"(all Linear weights transposed to [out, in]); exporter node names cross-checked on "
        f"{info['node_name_checks']} MatMuls; token_type_ids: {info['token_type_ids']}")
    log(f"config: {json.dumps(cfg)}")

    out_dir = os.path.abspath(out_dir.rstrip("/"))
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + os.path.basename(out_dir) + "-", dir=parent)
    try:
        config = transformers.BertConfig(
            architectures=["BertModel"], pad_token_id=0, position_embedding_type="absolute", **cfg
        )
        config.save_pretrained(tmp)
        with open(os.path.join(tmp, "config.json"), encoding="utf-8") as f:
            written = json.load(f)
        if written.get("model_type") != "bert":
            raise ConvertError(f"config.json has model_type {written.get('model_type')!r}")
        tensors = {k: params[k][0] for k in sorted(params)}
        safetensors.numpy.save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        how = gather_tokenizer(tokenizer_from, src, tmp)
        log(f"tokenizer: {how}")
        import tokenizers

        tv = tokenizers.Tokenizer.from_file(os.path.join(tmp, "tokenizer.json")).get_vocab_size(with_added_tokens=True)
        with open(os.path.join(tmp, "vocab.txt"), encoding="utf-8") as f:
            vv = sum(1 for _ in f)
        if tv != cfg["vocab_size"] or vv != cfg["vocab_size"]:
            raise ConvertError(
                f"tokenizer vocabulary ({tv} in tokenizer.json, {vv} lines in vocab.txt) != "
                f"{cfg['vocab_size']} rows of the word-embedding matrix"
            )
        log(f"tokenizer vocabulary {tv} == word-embedding rows {cfg['vocab_size']}")

        t_verify = time.monotonic()
        res = verify(tmp, model_bytes, G, info, cfg)
        log(f"ONNX outputs used: last_hidden_state = {res['onnx_hidden']!r}, mean-pooled = {res['onnx_pooled']!r}; "
            f"transformers left untouched (not in ONNX): {res['hf_missing'] or 'none'}; tokenizer {res['tokenizer_class']}")
        log(f"parity ok: worst max abs difference {res['worst']:.3e} <= {MAX_ABS_DIFF:g} "
            f"(verify {time.monotonic() - t_verify:.1f} s)")

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="onnx_bert_to_hf.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", metavar="SRC_ONNX")
    ap.add_argument("out", metavar="OUT_DIR")
    ap.add_argument("--tokenizer-from", metavar="DIR_OR_FILE",
                    help="folder with tokenizer.json/vocab.txt (+ configs), or one such file")
    args = ap.parse_args(argv)
    try:
        convert(args.src, args.tokenizer_from, args.out)
    except ConvertError as e:
        print(f"{PREFIX} error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
