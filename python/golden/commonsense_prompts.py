"""Golden digests of the commonsense suite's rendered questions (tests/commonsense_data.rs).

An implementation of the prompt templates of crates/flexlora/src/data/commonsense.rs written
independently of the Rust one, on pyarrow (not in python/requirements.txt:
`pip install --target /tmp/pa pyarrow` and run with PYTHONPATH=/tmp/pa). For each task it
prints the SHA-256 of, per row in file order,
`prompt \\0 choice_1 \\0 ... choice_k \\0 answer \\n` (UTF-8).

Usage: python python/golden/commonsense_prompts.py [assets/hf_datasets]
"""

import glob
import hashlib
import os
import re
import sys

import pyarrow as pa

PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{}\n\n### Response:\nthe correct answer is"
)


def rows(folder):
    out = []
    for f in sorted(glob.glob(os.path.join(folder, "data-*.arrow"))):
        with pa.memory_map(f) as s:
            out += pa.ipc.open_stream(s).read_all().to_pylist()
    return out


def numbered(prefix, texts):
    return "\n\n".join(f"{prefix}{i + 1}: {t}" for i, t in enumerate(texts))


def hellaswag_preprocess(text):
    # lm-evaluation-harness, lm_eval/tasks/hellaswag/utils.py
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def render(task, d):
    s = lambda k: d[k].strip()
    if task == "boolq":
        return (
            f"Please answer the following question with true or false, question: {s('question')}?",
            ["true", "false"],
            0 if d["answer"] else 1,
        )
    if task == "piqa":
        texts = [s("sol1"), s("sol2")]
        return (
            f"Please choose the correct solution to the question: {s('goal')}\n\n"
            + numbered("Solution", texts),
            texts,
            d["label"],
        )
    if task == "social_i_qa":
        texts = [s("answerA"), s("answerB"), s("answerC")]
        return (
            f"Please choose the correct answer to the question: {s('context')} {s('question')}\n\n"
            + numbered("Answer", texts),
            texts,
            int(d["label"]) - 1,
        )
    if task == "hellaswag":
        ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
        query = hellaswag_preprocess(d["activity_label"] + ": " + ctx)
        texts = [hellaswag_preprocess(e).strip() for e in d["endings"]]
        return (
            f"Please choose the correct ending to complete the given sentence: {query}\n\n"
            + numbered("Ending", texts),
            texts,
            int(d["label"]),
        )
    if task == "winogrande":
        texts = [s("option1"), s("option2")]
        return (
            "Please choose the correct answer to fill in the blank to complete the given "
            f"sentence: {s('sentence')}\n\n" + numbered("Option", texts),
            texts,
            int(d["answer"]) - 1,
        )
    question = s("question_stem" if task == "openbookqa" else "question")
    texts = [t.strip() for t in d["choices"]["text"]]
    labels = [t.strip() for t in d["choices"]["label"]]
    return (
        f"Please choose the correct answer to the question: {question}\n\n"
        + numbered("Answer", texts),
        texts,
        labels.index(d["answerKey"].strip()),
    )


TASKS = {
    "boolq": "boolq/none/validation",
    "piqa": "piqa/plain_text/validation",
    "social_i_qa": "social_i_qa/none/validation",
    "hellaswag": "hellaswag/none/validation",
    "winogrande": "winogrande/winogrande_xl/validation",
    "arc_easy": "ai2_arc/ARC-Easy/validation",
    "arc_challenge": "ai2_arc/ARC-Challenge/validation",
    "openbookqa": "openbookqa/main/validation",
}

if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else "assets/hf_datasets"
    for task, folder in TASKS.items():
        h = hashlib.sha256()
        n = 0
        for d in rows(os.path.join(root, folder)):
            instruction, texts, answer = render(task, d)
            parts = [PROMPT.format(instruction)] + [" " + t for t in texts] + [str(answer)]
            h.update(("\0".join(parts) + "\n").encode("utf-8"))
            n += 1
        print(f'("{task}", {n}, "{h.hexdigest()}"),')
