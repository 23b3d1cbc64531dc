"""The requests lm-evaluation-harness builds for the eight commonsense tasks, from the local data.

Loads the harness's own task configs (the `lm-eval` package from PyPI) with `load_dataset`
answered from the local `save_to_disk` folders (assets/hf_datasets), builds every zero-shot
request and writes, per task and row in file order: the context and continuation of each choice,
the gold index and acc_norm's normaliser (`len(choice)` over `doc_to_choice`). Prints one SHA-256
per task over those rows (the digest tests/commonsense_data.rs compares with flexlora's
`--format harness` rendering, see `harness_digest` there).

Not in python/requirements.txt (lm-eval pulls datasets, evaluate, scikit-learn, ...):

    .venv/bin/pip install --target /tmp/lmeval lm-eval==0.4.13
    PYTHONPATH=/tmp/lmeval .venv/bin/python python/check/lm_eval_harness.py \
        assets/hf_datasets runs/harness-requests.json
"""

import hashlib
import json
import os
import sys

import datasets

FOLDERS = {
    "boolq": "boolq/none/validation",
    "piqa": "piqa/plain_text/validation",
    "social_iqa": "social_i_qa/none/validation",
    "hellaswag": "hellaswag/none/validation",
    "winogrande": "winogrande/winogrande_xl/validation",
    "arc_easy": "ai2_arc/ARC-Easy/validation",
    "arc_challenge": "ai2_arc/ARC-Challenge/validation",
    "openbookqa": "openbookqa/main/validation",
}


def digest(rows):
    """SHA-256 over rows: per choice `context \\x1f continuation \\x1f norm_length`, choices
    joined by `\\x1e`, then `\\x1d gold \\n`."""
    h = hashlib.sha256()
    for r in rows:
        parts = [
            f"{c}\x1f{k}\x1f{n}"
            for c, k, n in zip(r["contexts"], r["continuations"], r["norm_lengths"])
        ]
        h.update(("\x1e".join(parts) + f"\x1d{r['gold']}\n").encode("utf-8"))
    return h.hexdigest()


def main():
    root, out_path = sys.argv[1], sys.argv[2]
    current = {}

    def local_dataset(path=None, name=None, **kwargs):
        # Only validation splits ship; every split the configs name is that one (zero-shot
        # requests come from the split the harness evaluates, fewshot ones are not built).
        split = datasets.load_from_disk(os.path.join(root, FOLDERS[current["task"]]))
        if current["task"] == "boolq":
            # This copy of BoolQ (google/boolq's fields) stores `answer` as a boolean where
            # SuperGLUE's, which the harness config reads, has `label` 0/1 (1 = true).
            split = split.map(lambda d: {"label": int(d["answer"])})
        return datasets.DatasetDict({"train": split, "validation": split, "test": split})

    # The harness calls datasets.load_dataset(path=..., name=...) when a task is built.
    datasets.load_dataset = local_dataset
    import lm_eval.api.task as task_module
    from lm_eval.tasks import TaskManager, get_task_dict

    task_module.datasets.load_dataset = local_dataset
    manager = TaskManager()
    out = {}
    for name in FOLDERS:
        current["task"] = name
        task = get_task_dict([name], manager)[name]
        task.build_all_requests(rank=0, world_size=1)
        by_doc = {}
        for inst in task.instances:
            by_doc.setdefault(inst.doc_id, []).append(inst)
        rows = []
        docs = list(task.eval_docs)
        for doc_id in sorted(by_doc):
            insts = sorted(by_doc[doc_id], key=lambda i: i.idx)
            doc = docs[doc_id]
            choices = task.doc_to_choice(doc)
            if task.multiple_input:
                gold = task.doc_to_text(doc)
            else:
                gold = task.doc_to_target(doc)
                if isinstance(gold, str):
                    gold = choices.index(gold) if gold in choices else int(gold)
            rows.append(
                {
                    "contexts": [i.arguments[0] for i in insts],
                    "continuations": [i.arguments[1] for i in insts],
                    "gold": int(gold),
                    "norm_lengths": [len(c) for c in choices],
                }
            )
        out[name] = {"digest": digest(rows), "rows": rows}
        print(f"{name} {len(rows)} {out[name]['digest']}")
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
