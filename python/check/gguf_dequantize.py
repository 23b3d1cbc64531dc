"""Writes a float32 copy of a GGUF model: every tensor dequantized with the `gguf` package, every
metadata field kept (but `general.file_type`, set to 0, all F32). The base model of
scripts/check-llama-cpp, so that llama.cpp's arithmetic is float32 like ours: the HF folder of
`scripts/fetch-assets llama` holds these same dequantized weights.

Usage: gguf_dequantize.py IN.gguf OUT.gguf
"""
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize

src, dst = sys.argv[1:3]
reader = GGUFReader(src)
arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
writer = GGUFWriter(dst, arch)
for name, field in reader.fields.items():
    if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
        continue
    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == GGUFValueType.STRING:
            value = [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]
        else:
            value = [field.parts[i].tolist()[0] for i in field.data]
        writer.add_key_value(name, value, kind, sub_type=sub)
    elif kind == GGUFValueType.STRING:
        writer.add_key_value(name, bytes(field.parts[-1]).decode("utf-8"), kind)
    else:
        writer.add_key_value(name, field.parts[-1].tolist()[0], kind)
writer.add_file_type(0)
for t in reader.tensors:
    values = dequantize(t.data, t.tensor_type).astype(np.float32)
    writer.add_tensor(t.name, values.reshape([int(x) for x in reversed(t.shape)]))
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
