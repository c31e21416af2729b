"""Shared helpers for the example scripts: deterministic JSON writing and JSONL reading.

Every output is written byte-identically for identical inputs (sorted keys, floats rounded
to a fixed number of digits, "\n" line endings) so pipe's content-hash cache and early
cutoff work. Files are written to a temporary name and renamed, so a killed stage never
leaves a half-written output behind.
"""

import json
import math
import os

DIGITS = 8


def clean(value, digits=DIGITS):
    """Round every float inside VALUE to DIGITS decimals (recursively)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"refusing to write non-finite float {value!r}")
        rounded = round(value, digits)
        return 0.0 if rounded == 0 else rounded  # no "-0.0"
    if isinstance(value, dict):
        return {k: clean(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, digits) for v in value]
    return value


def dumps(value, digits=DIGITS, indent=None):
    """Deterministic JSON text for VALUE."""
    sep = (",", ":") if indent is None else (",", ": ")
    return json.dumps(clean(value, digits), sort_keys=True, indent=indent,
                      separators=sep, allow_nan=False)


def ensure_parent(path):
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)


def write_text(path, text):
    """Write TEXT to PATH atomically (temp file + rename).

    A target that exists and is not a regular file (/dev/stdout, a FIFO, a symlink to one)
    is written in place instead, so `evaluate.py ... /dev/stdout` works by hand.
    """
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        return
    ensure_parent(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path, value, digits=DIGITS):
    """Write one pretty, sorted JSON document (used for metrics and models)."""
    write_text(path, dumps(value, digits, indent=2) + "\n")


def write_jsonl(path, rows, digits=DIGITS):
    """Write one compact, sorted JSON object per line."""
    write_text(path, "".join(dumps(r, digits) + "\n" for r in rows))


def read_jsonl(path):
    """Read a JSONL file into a list of dicts (blank lines skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def sigmoid(z):
    """Numerically stable logistic function."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
