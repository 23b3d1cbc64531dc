"""What the benchmark's two Python scripts share: the PEFT model both sides are compared on, and
the precision it runs in."""
import contextlib

import torch
from transformers import BertForSequenceClassification
from transformers.utils import logging as hf_logging

from peft import AdaLoraConfig, LoraConfig, get_peft_model

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


def peft_model(folder, spec, total_step):
    """BertForSequenceClassification from FOLDER with PEFT's LoRA or AdaLoRA as SPEC says
    (the keys documented in peft_worker.py); AdaLoRA's schedule spans TOTAL_STEP steps."""
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=2)
    common = dict(task_type="SEQ_CLS", target_modules=spec["target_modules"], lora_dropout=0.0)
    if spec["method"] == "lora":
        config = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], **common)
    else:
        config = AdaLoraConfig(
            init_r=spec["init_r"],
            target_r=spec["target_r"],
            lora_alpha=spec["alpha"],
            tinit=spec["tinit"],
            tfinal=spec["tfinal"],
            deltaT=spec["deltaT"],
            total_step=total_step,
            orth_reg_weight=spec["orth_reg_weight"],
            **common,
        )
    return get_peft_model(model, config)


def precision(spec):
    """The context a forward pass and its loss run in: bf16 autocast on the CPU when SPEC asks
    for bf16 (flexlora's training.precision = "bf16"), else nothing."""
    if spec.get("bf16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
