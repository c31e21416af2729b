"""Stage `train`: logistic regression in pure Python, trained by mini-batch gradient descent.

Minimises the mean log-loss plus `l2/2 * |w|^2` (the bias is not regularised). The seed
drives the initial weights and the batch order, so the same data and arguments give a
byte-identical model file:
    {"bias": ..., "weights": [...], "features": 8, "hyperparams": {...}, "train": {...}}

    python3 scripts/train.py --data data/train.jsonl --out models/candidate.json \
        --lr 0.1 --epochs 30 --l2 0.001 --batch-size 32 --seed 7
"""

import argparse
import math
import random
import sys

from common import read_jsonl, sigmoid, write_json

EPS = 1e-12


def mean_log_loss(rows, w, b):
    total = 0.0
    for r in rows:
        p = sigmoid(b + sum(wi * xi for wi, xi in zip(w, r["x"])))
        p = min(max(p, EPS), 1.0 - EPS)
        total -= math.log(p) if r["y"] else math.log(1.0 - p)
    return total / len(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/train.jsonl")
    ap.add_argument("--out", default="models/candidate.json")
    ap.add_argument("--lr", type=float, default=0.1, help="learning rate")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--l2", type=float, default=0.001, help="L2 penalty on the weights")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    if a.lr <= 0 or a.epochs < 1 or a.l2 < 0 or a.batch_size < 1:
        ap.error("need lr > 0, epochs >= 1, l2 >= 0, batch-size >= 1")

    rows = read_jsonl(a.data)
    if not rows:
        print(f"train: no rows in {a.data}", file=sys.stderr)
        return 1
    n_feat = len(rows[0]["x"])
    rng = random.Random(a.seed)
    w = [rng.gauss(0.0, 0.01) for _ in range(n_feat)]
    b = 0.0
    order = list(range(len(rows)))

    for epoch in range(1, a.epochs + 1):
        rng.shuffle(order)
        for start in range(0, len(order), a.batch_size):
            batch = order[start:start + a.batch_size]
            gw = [0.0] * n_feat
            gb = 0.0
            for i in batch:
                x, y = rows[i]["x"], rows[i]["y"]
                err = sigmoid(b + sum(wi * xi for wi, xi in zip(w, x))) - y
                gb += err
                for j in range(n_feat):
                    gw[j] += err * x[j]
            scale = a.lr / len(batch)
            for j in range(n_feat):
                w[j] -= scale * gw[j] + a.lr * a.l2 * w[j]
            b -= scale * gb
        if epoch == 1 or epoch == a.epochs or epoch % 10 == 0:
            print(f"train: epoch {epoch}/{a.epochs} log-loss {mean_log_loss(rows, w, b):.5f}")

    loss = mean_log_loss(rows, w, b)
    if not math.isfinite(loss):
        print("train: training diverged (non-finite loss); lower --lr", file=sys.stderr)
        return 1
    model = {
        "kind": "logistic_regression",
        "features": n_feat,
        "weights": w,
        "bias": b,
        "hyperparams": {"lr": a.lr, "epochs": a.epochs, "l2": a.l2,
                        "batch_size": a.batch_size, "seed": a.seed},
        "train": {"rows": len(rows), "log_loss": loss},
    }
    write_json(a.out, model)
    print(f"train: {len(rows)} rows, final log-loss {loss:.5f} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
