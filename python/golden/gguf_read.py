"""Reads GGUF adapter files back with the `gguf` package (llama.cpp's own Python reader) and
checks their metadata and tensor types: the read-back half of the gguf-lora export test.

Usage: gguf_read.py SPEC.json IN.safetensors OUT.safetensors
SPEC: {"files": [{"name": N, "path": FILE, "tensor_type": "F32" | "F16" | "BF16",
                  "metadata": {key: expected value (string or number)}}]}
Every key of "metadata" must be in the file with that value, every tensor must have the tensor
type given, and the file must be GGUF version 3. IN: unused. OUT: "<N>.<tensor name>" for every
tensor, as float32 in row-major order (the reverse of GGML's dimension order).
"""
import json
import sys

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType
from safetensors.torch import save_file

spec_path, _in_path, out_path = sys.argv[1:4]
spec = json.load(open(spec_path))
out = {}


def field_value(field):
    kind = field.types[0]
    part = field.parts[field.data[0]]
    if kind == GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    return part.tolist()[0]


for f in spec["files"]:
    reader = GGUFReader(f["path"])
    version = field_value(reader.fields["GGUF.version"])
    if version != 3:
        raise SystemExit(f"{f['path']}: GGUF version {version}, expected 3")
    for key, want in f["metadata"].items():
        if key not in reader.fields:
            raise SystemExit(f"{f['path']}: metadata {key} missing")
        got = field_value(reader.fields[key])
        if got != want:
            raise SystemExit(f"{f['path']}: metadata {key} = {got!r}, expected {want!r}")
    for t in reader.tensors:
        if t.tensor_type.name != f["tensor_type"]:
            raise SystemExit(f"{f['path']}: {t.name} is {t.tensor_type.name}, expected {f['tensor_type']}")
        shape = [int(x) for x in reversed(t.shape)]
        data = np.asarray(t.data)
        if t.tensor_type.name == "BF16":
            data = (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        values = torch.from_numpy(np.ascontiguousarray(data.astype(np.float32)).reshape(shape))
        out[f"{f['name']}.{t.name}"] = values
save_file({k: v.contiguous() for k, v in out.items()}, out_path)
