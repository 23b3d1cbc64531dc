"""Prints docs/results.md's commonsense table (Markdown) from runs/commonsense: zero-shot and
every finished decoder run (mean over seeds), acc / acc_norm per task in percent, and how long
each run took. Usage: python3 scripts/commonsense_table.py runs/commonsense"""
import json
import pathlib
import statistics
import sys

root = pathlib.Path(sys.argv[1])
rows = []
zero = root / "zero-shot.json"
if zero.exists():
    z = json.loads(zero.read_text())
    secs = (root / "zero-shot.seconds").read_text().strip() if (root / "zero-shot.seconds").exists() else "?"
    rows.append(("zero-shot (no adapter)", [z["tasks"]], f"eval {float(secs):.0f} s" if secs != "?" else "?"))
for method in ("flexlora", "adalora", "lora"):
    runs = sorted(root.glob(f"{method}-seed*/summary.json"))
    if not runs:
        continue
    sums = [json.loads(p.read_text()) for p in runs]
    took = ", ".join(f"{s['train_seconds'] / 60:.1f} + {s['eval_seconds'] / 60:.1f} min" for s in sums)
    label = f"{method} ({len(sums)} seed{'s' if len(sums) > 1 else ''}, {sums[0]['trainable_parameters']:,} params)"
    rows.append((label, [s["tasks"] for s in sums], took))

tasks = [t["task"] for t in rows[0][1][0]]
print("| method | " + " | ".join(tasks) + " | time (train + eval) |")
print("| --- | " + " | ".join("---:" for _ in tasks) + " | --- |")
for label, tables, took in rows:
    cells = []
    for i, _ in enumerate(tasks):
        acc = statistics.mean(t[i]["acc"] for t in tables) * 100
        norm = statistics.mean(t[i]["acc_norm"] for t in tables) * 100
        cells.append(f"{acc:.1f} / {norm:.1f}")
    print(f"| {label} | " + " | ".join(cells) + f" | {took} |")


def correct(outcomes, normalise):
    """{(task, row): right?} by the acc (or acc_norm) rule, as flexlora's `pick`."""
    out = {}
    for o in outcomes:
        vals = [s["logprob"] / max(s.get("norm_length", s.get("bytes", 1)), 1) if normalise else s["logprob"] for s in o["scores"]]
        best = max(range(len(vals)), key=lambda i: (vals[i], -i))
        out[(o["task"], o["row"])] = best == o["answer"]
    return out


def outcomes_of(name, seed):
    if name == "zero-shot":
        return json.loads(zero.read_text())["outcomes"]
    path = root / f"{name}-seed{seed}" / "predictions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else None


def exact_p(b, c):
    """Two-sided exact McNemar (binomial) p-value for b vs c discordant questions."""
    from math import comb
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


print()
print("Paired on the same questions, per training seed (acc rule): questions only the first method")
print("gets right, only the second, and the exact McNemar p-value.")
print()
print("| comparison | seed | first only | second only | p |")
print("| --- | ---: | ---: | ---: | ---: |")
for a, b in (("flexlora", "zero-shot"), ("flexlora", "adalora"), ("flexlora", "lora"), ("adalora", "lora")):
    for seed in range(10):
        oa, ob = outcomes_of(a, seed), outcomes_of(b, seed)
        if not oa or not ob:
            continue
        ca, cb = correct(oa, False), correct(ob, False)
        only_a = sum(1 for k in ca if ca[k] and not cb.get(k, False))
        only_b = sum(1 for k in ca if cb.get(k, False) and not ca[k])
        print(f"| {a} vs {b} | {seed} | {only_a} | {only_b} | {exact_p(only_a, only_b):.3f} |")
