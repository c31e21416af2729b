"""Stage `evaluate`: score the candidate model on the held-out test set.

Writes a JSON metrics file with numeric keys only, for `pipe metrics` and the gate:
    accuracy, loss (mean log-loss), auc (ROC AUC), precision, recall, f1,
    rows (test rows scored), games (same as rows; the name the SPEC's examples use),
    positives, threshold

    python3 scripts/evaluate.py models/candidate.json data/test.jsonl metrics/eval.json
"""

import argparse
import json
import math
import sys

from common import read_jsonl, sigmoid, write_json

EPS = 1e-12


def roc_auc(scores, labels):
    """Probability that a random positive scores above a random negative (ties count 1/2)."""
    pairs = sorted(zip(scores, labels))
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + 1 + j) / 2.0  # ranks are 1-based; ties share the mean rank
        rank_sum += avg_rank * sum(lbl for _, lbl in pairs[i:j])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="model JSON written by train.py")
    ap.add_argument("data", help="test rows (JSONL)")
    ap.add_argument("out", help="metrics JSON to write")
    ap.add_argument("--threshold", type=float, default=0.5)
    a = ap.parse_args()

    with open(a.model, encoding="utf-8") as f:
        model = json.load(f)
    w, b = model["weights"], model["bias"]
    rows = read_jsonl(a.data)
    if not rows:
        print(f"evaluate: no rows in {a.data}", file=sys.stderr)
        return 1

    probs, labels = [], []
    loss = 0.0
    tp = fp = tn = fn = 0
    for r in rows:
        if len(r["x"]) != len(w):
            print(f"evaluate: row {r.get('id')} has {len(r['x'])} features, "
                  f"the model {len(w)}", file=sys.stderr)
            return 1
        p = sigmoid(b + sum(wi * xi for wi, xi in zip(w, r["x"])))
        y = r["y"]
        probs.append(p)
        labels.append(y)
        pc = min(max(p, EPS), 1.0 - EPS)
        loss -= math.log(pc) if y else math.log(1.0 - pc)
        pred = 1 if p >= a.threshold else 0
        if pred and y:
            tp += 1
        elif pred:
            fp += 1
        elif y:
            fn += 1
        else:
            tn += 1

    n = len(rows)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    metrics = {
        "accuracy": (tp + tn) / n,
        "loss": loss / n,
        "auc": roc_auc(probs, labels),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "rows": n,
        "games": n,
        "positives": tp + fn,
        "threshold": a.threshold,
    }
    write_json(a.out, metrics, digits=6)
    print(f"evaluate: accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}  "
          f"auc {metrics['auc']:.4f}  precision {precision:.4f}  recall {recall:.4f}  "
          f"({n} rows) -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
