"""Golden AdaLoRA training run: transformers' BertForSequenceClassification with PEFT's AdaLoRA.

Usage: adalora_train.py FOLDER SPEC.json IN.safetensors OUT.safetensors
SPEC: {"paths": [adapted module paths, model order], "target_modules": [...], "num_labels",
"init_r", "target_r", "lora_alpha", "tinit", "tfinal", "deltaT", "total_step", "beta1",
"beta2", "orth_reg_weight", "lr", "adam_betas": [b1, b2], "adam_eps", "batches", "threads"}
IN: init.M.P / init.M.lambda / init.M.Q for every adapted module path M (lora_B, lora_E,
lora_A at the start), classifier.weight / classifier.bias (the head), and for every batch i
batch.i.input_ids / .attention_mask / .token_type_ids / .labels.
Training: step t (0-based) uses batch t mod batches; dropout off (eval mode, lora_dropout 0);
the loss is PeftModel's (task loss plus AdaLoRA's orthogonal regularisation, added in
AdaLoraModel.forward); backward; torch.optim.AdamW (constant lr, no weight decay) over every
trainable parameter (adapters and the classifier in modules_to_save); then
model.base_model.update_and_allocate(t); then zero_grad, as PEFT's AdaLoRA example does.
OUT: loss [T]; lambda [T, K, r] (lora_E after each step's update_and_allocate); pattern
[T, K, r] (the rank_pattern PEFT holds after each step, 1 = kept; all 1 before the first
mask); final.M.P / .lambda / .Q and final.classifier.weight / .bias.
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import BertForSequenceClassification
from transformers.utils import logging as hf_logging

from peft import AdaLoraConfig, get_peft_model

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

folder, spec_path, in_path, out_path = sys.argv[1:5]
spec = json.load(open(spec_path))
t = load_file(in_path)
torch.manual_seed(0)
torch.set_num_threads(spec["threads"])

model = BertForSequenceClassification.from_pretrained(folder, num_labels=spec["num_labels"])
with torch.no_grad():
    model.classifier.weight.copy_(t["classifier.weight"])
    model.classifier.bias.copy_(t["classifier.bias"])
config = AdaLoraConfig(
    task_type="SEQ_CLS",
    init_r=spec["init_r"],
    target_r=spec["target_r"],
    lora_alpha=spec["lora_alpha"],
    lora_dropout=0.0,
    target_modules=spec["target_modules"],
    tinit=spec["tinit"],
    tfinal=spec["tfinal"],
    deltaT=spec["deltaT"],
    beta1=spec["beta1"],
    beta2=spec["beta2"],
    orth_reg_weight=spec["orth_reg_weight"],
    total_step=spec["total_step"],
)
model = get_peft_model(model, config)
model.eval()
inner = model.base_model.model
layers = []
for path in spec["paths"]:
    m = inner.get_submodule("bert." + path)
    with torch.no_grad():
        m.lora_B["default"].copy_(t[f"init.{path}.P"])
        m.lora_E["default"].copy_(t[f"init.{path}.lambda"].unsqueeze(1))
        m.lora_A["default"].copy_(t[f"init.{path}.Q"])
    layers.append((path, m))
classifier = inner.classifier.modules_to_save["default"]

params = [p for p in model.parameters() if p.requires_grad]
n_adapter = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
n_clf = sum(p.numel() for p in classifier.parameters())
assert sum(p.numel() for p in params) == n_adapter + n_clf, "only adapters and classifier train"
b1, b2 = spec["adam_betas"]
opt = torch.optim.AdamW(params, lr=spec["lr"], betas=(b1, b2), eps=spec["adam_eps"], weight_decay=0.0)

losses, lambdas, patterns = [], [], []
names_e = {path: f"bert.{path}.lora_E.default" for path in spec["paths"]}
for step in range(spec["total_step"]):
    b = step % spec["batches"]
    out = model(
        input_ids=t[f"batch.{b}.input_ids"],
        attention_mask=t[f"batch.{b}.attention_mask"],
        token_type_ids=t[f"batch.{b}.token_type_ids"],
        labels=t[f"batch.{b}.labels"],
    )
    out.loss.backward()
    opt.step()
    model.base_model.update_and_allocate(step)
    opt.zero_grad()
    losses.append(out.loss.item())
    lambdas.append(torch.stack([m.lora_E["default"].detach().view(-1).clone() for _, m in layers]))
    rp = model.peft_config["default"].rank_pattern
    if rp is None:
        patterns.append(torch.ones_like(lambdas[-1]))
    else:
        patterns.append(torch.tensor([rp[names_e[p]] for p in spec["paths"]], dtype=torch.float32))

res = {
    "loss": torch.tensor(losses, dtype=torch.float64),
    "lambda": torch.stack(lambdas),
    "pattern": torch.stack(patterns),
    "final.classifier.weight": classifier.weight.detach(),
    "final.classifier.bias": classifier.bias.detach(),
}
for path, m in layers:
    res[f"final.{path}.P"] = m.lora_B["default"].detach()
    res[f"final.{path}.lambda"] = m.lora_E["default"].detach().view(-1)
    res[f"final.{path}.Q"] = m.lora_A["default"].detach()
save_file({k: v.contiguous() for k, v in res.items()}, out_path)
