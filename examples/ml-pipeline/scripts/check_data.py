"""Stage `check_data`: validate the exported rows before anything trains on them.

Checks every row of each input file: valid JSON object, an integer `id`, a list `x` of
finite numbers of the same length in every row, and a label `y` in {0, 1}. Writes the
counts to a JSON metrics file (numeric fields: rows, train_rows, test_rows, features,
bad_rows, duplicate_ids, positive_ratio, train_positive_ratio, test_positive_ratio) that
the `dataset_quality_gate` checks.

Exits 1 when the data is broken (a file missing or empty, or any bad row); the class
balance is left to the gate.

    python3 scripts/check_data.py data/train.jsonl data/test.jsonl --out metrics/data_check.json
"""

import argparse
import json
import math
import sys

from common import write_json


def check_file(path, expect_features):
    """Return (rows, positives, bad_rows, ids, n_features, problems) for one JSONL file."""
    rows = positives = bad = 0
    ids, problems = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            rows += 1
            why = None
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                r, why = None, f"invalid JSON ({e.msg})"
            if why is None and not isinstance(r, dict):
                why = "not a JSON object"
            if why is None:
                x, y, rid = r.get("x"), r.get("y"), r.get("id")
                if not isinstance(rid, int) or isinstance(rid, bool):
                    why = "missing or non-integer id"
                elif not isinstance(x, list) or not x:
                    why = "missing or empty feature list x"
                elif not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                             and math.isfinite(v) for v in x):
                    why = "non-numeric, NaN or infinite feature"
                elif expect_features is not None and len(x) != expect_features:
                    why = f"{len(x)} features, expected {expect_features}"
                elif y not in (0, 1) or isinstance(y, bool):
                    why = f"label {y!r} is not 0 or 1"
                else:
                    if expect_features is None:
                        expect_features = len(x)
                    ids.append(rid)
                    positives += y
            if why is not None:
                bad += 1
                if len(problems) < 10:
                    problems.append(f"{path}:{lineno}: {why}")
    return rows, positives, bad, ids, expect_features, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train", help="training rows (JSONL)")
    ap.add_argument("test", help="test rows (JSONL)")
    ap.add_argument("--out", default="metrics/data_check.json")
    a = ap.parse_args()

    features = None
    stats, problems, all_ids = {}, [], []
    for name, path in (("train", a.train), ("test", a.test)):
        try:
            rows, pos, bad, ids, features, probs = check_file(path, features)
        except OSError as e:
            print(f"check_data: cannot read {path}: {e.strerror}", file=sys.stderr)
            return 1
        stats[name] = (rows, pos, bad)
        problems += probs
        all_ids += ids

    rows = stats["train"][0] + stats["test"][0]
    good = rows - stats["train"][2] - stats["test"][2]
    positives = stats["train"][1] + stats["test"][1]
    duplicate_ids = len(all_ids) - len(set(all_ids))

    def ratio(p, n):
        return p / n if n else 0.0

    report = {
        "rows": rows,
        "train_rows": stats["train"][0],
        "test_rows": stats["test"][0],
        "features": features or 0,
        "bad_rows": stats["train"][2] + stats["test"][2],
        "duplicate_ids": duplicate_ids,
        "positive_ratio": ratio(positives, good),
        "train_positive_ratio": ratio(stats["train"][1], stats["train"][0] - stats["train"][2]),
        "test_positive_ratio": ratio(stats["test"][1], stats["test"][0] - stats["test"][2]),
    }
    write_json(a.out, report, digits=6)

    for p in problems:
        print(f"check_data: {p}", file=sys.stderr)
    print(f"check_data: {rows} rows ({report['train_rows']} train, {report['test_rows']} test), "
          f"{report['bad_rows']} bad, {duplicate_ids} duplicate ids, "
          f"positive ratio {report['positive_ratio']:.3f} -> {a.out}")
    if stats["train"][0] == 0 or stats["test"][0] == 0:
        print("check_data: an input file is empty", file=sys.stderr)
        return 1
    if report["bad_rows"] or duplicate_ids:
        print("check_data: the data is broken (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
