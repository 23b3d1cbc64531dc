"""llama.cpp itself against flexlora on a gguf-lora adapter: `scripts/check-llama-cpp`.

Usage: llama_cpp_lora.py BASE_GGUF HF_FOLDER PEFT_ADAPTER GGUF_ADAPTER PROMPT OUT.json
(BASE_GGUF: the model in float32, python/check/gguf_dequantize.py's output.)
Runs the prompt's tokens (SmolLM2's tokenizer from HF_FOLDER) through
  - llama.cpp (llama-cpp-python) on BASE_GGUF, alone and with GGUF_ADAPTER (`lora_path`), and
  - transformers' LlamaForCausalLM on HF_FOLDER (the same weights, dequantized to float32 by
    scripts/fetch-assets llama), alone and with PEFT_ADAPTER (the run's PEFT export, whose logits
    tests/lm_peft.rs shows equal to flexlora's within 1e-4),
and writes the largest logit differences over every position: llama.cpp against transformers
without the adapter (the floor llama.cpp's quantized arithmetic sets), the same with the
adapter, and how far the adapter moves each side's logits. Exit status 1 when the adapter's
difference exceeds twice the floor plus 1e-3, or when the adapter moves llama.cpp's logits by
less than ten times the floor. Also written: the adapter's own effect on each side (with minus
without), their largest difference and their correlation.
"""
import json
import sys

import numpy as np
import torch
from llama_cpp import Llama
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base_gguf, hf_folder, peft_dir, gguf_adapter, prompt, out_path = sys.argv[1:7]
tokens = AutoTokenizer.from_pretrained(hf_folder)(prompt)["input_ids"]


def llama_cpp_logits(lora):
    kwargs = dict(model_path=base_gguf, n_ctx=512, logits_all=True, n_threads=2, verbose=False, seed=0)
    if lora:
        kwargs["lora_path"] = gguf_adapter
    llm = Llama(**kwargs)
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float64)


def transformers_logits(adapter):
    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
    if adapter:
        model = PeftModel.from_pretrained(model, peft_dir)
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0].double().numpy()


cpp_base, cpp_lora = llama_cpp_logits(False), llama_cpp_logits(True)
hf_base, hf_lora = transformers_logits(False), transformers_logits(True)
result = {
    "tokens": len(tokens),
    "floor_base": float(np.abs(cpp_base - hf_base).max()),
    "with_adapter": float(np.abs(cpp_lora - hf_lora).max()),
    "adapter_moves_llama_cpp": float(np.abs(cpp_lora - cpp_base).max()),
    "adapter_moves_transformers": float(np.abs(hf_lora - hf_base).max()),
    "same_argmax": int((cpp_lora.argmax(1) == hf_lora.argmax(1)).sum()),
}
# The adapter's own effect on each side: the base's quantisation error mostly cancels in it.
effect_cpp, effect_hf = cpp_lora - cpp_base, hf_lora - hf_base
result["effect_difference"] = float(np.abs(effect_cpp - effect_hf).max())
result["effect_correlation"] = float(np.corrcoef(effect_cpp.ravel(), effect_hf.ravel())[0, 1])
json.dump(result, open(out_path, "w"), indent=1)
print(json.dumps(result, indent=1))
ok = result["with_adapter"] <= 2 * result["floor_base"] + 1e-3 and (
    result["adapter_moves_llama_cpp"] >= 10 * result["floor_base"]
)
sys.exit(0 if ok else 1)
