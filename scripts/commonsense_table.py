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
