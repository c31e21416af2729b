"""Stage `export`: generate a seeded, synthetic binary-classification dataset.

A hidden linear model (weights drawn from the seed) scores Gaussian features; Gaussian
noise is added to the score and the label is `score > 0`. The rows are shuffled and split
into data/train.jsonl and data/test.jsonl, one JSON object a line:
    {"id": 17, "x": [0.12, -1.3, ...], "y": 1}

Same arguments -> byte-identical files.

    python3 scripts/export.py --seed 42 --rows 2000 --features 8 --noise 1.0 \
        --test-fraction 0.2 --train-out data/train.jsonl --test-out data/test.jsonl
"""

import argparse
import random

from common import write_jsonl

FEATURE_DIGITS = 6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--noise", type=float, default=1.0,
                    help="std-dev of the Gaussian noise added to the hidden score")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--train-out", default="data/train.jsonl")
    ap.add_argument("--test-out", default="data/test.jsonl")
    a = ap.parse_args()
    if a.rows < 2 or a.features < 1 or not 0.0 < a.test_fraction < 1.0 or a.noise < 0:
        ap.error("need rows >= 2, features >= 1, 0 < test-fraction < 1, noise >= 0")

    rng = random.Random(a.seed)
    weights = [rng.uniform(-1.5, 1.5) for _ in range(a.features)]
    bias = rng.uniform(-0.3, 0.3)

    rows = []
    for i in range(a.rows):
        x = [round(rng.gauss(0.0, 1.0), FEATURE_DIGITS) for _ in range(a.features)]
        score = bias + sum(w * v for w, v in zip(weights, x)) + rng.gauss(0.0, a.noise)
        rows.append({"id": i, "x": x, "y": 1 if score > 0 else 0})

    rng.shuffle(rows)
    n_test = max(1, round(a.rows * a.test_fraction))
    test, train = rows[:n_test], rows[n_test:]
    train.sort(key=lambda r: r["id"])
    test.sort(key=lambda r: r["id"])

    write_jsonl(a.train_out, train, FEATURE_DIGITS)
    write_jsonl(a.test_out, test, FEATURE_DIGITS)
    print(f"export: {len(train)} train rows -> {a.train_out}, "
          f"{len(test)} test rows -> {a.test_out} ({a.features} features, seed {a.seed})")


if __name__ == "__main__":
    main()
