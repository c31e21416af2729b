#!/usr/bin/env python3
"""Turn benches/run.sh results (TSV: id, tool, value, runs, note) into a Markdown report."""

import argparse
import collections

PEERS = [("make", "make"), ("dvc", "DVC"), ("smk", "Snakemake")]
OTHERS = {"b3sum", "md5sum", "cp", "nocache", "floor", "features"}


def load(path):
    rows = collections.defaultdict(dict)
    for line in open(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 5:
            continue
        id_, tool, value, runs, note = parts[:5]
        rows[id_][tool] = (float(value) if value else None, note)
    return rows


def fmt(v, note, unit="s"):
    if note == "failed" or v is None:
        return "failed"
    if note == "MB":
        return f"{v:.0f} MB"
    s = f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}"
    return f"> {s} s" if note == "timeout" else f"{s} s"


def ratio(p, q):
    """pipe / peer, with a bound when the peer was stopped; returns (text, value, is_bound)."""
    (pv, pn), (qv, qn) = p, q
    if pv is None or qv is None or pn == "failed" or qn == "failed" or qv == 0:
        return "—", None, False
    r = pv / qv
    inv = f" = 1/{qv / pv:.0f}" if r < 0.5 else ""
    if qn == "timeout":
        return f"< {r:.3f}{inv}", r, True
    return f"{r:.3f}{inv}" if r < 10 else f"{r:.1f}", r, False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tsv")
    ap.add_argument("--machine")
    ap.add_argument("--notes")
    ap.add_argument("--w1", type=int, default=100000)
    ap.add_argument("--w2", type=int, default=1000)
    ap.add_argument("--w3", type=int, nargs=2, default=[4, 512])
    ap.add_argument("--w4", type=int, nargs=2, default=[8, 4])
    ap.add_argument("--w5", type=int, default=10000)
    ap.add_argument("--cache", type=int, default=1024)
    ap.add_argument("--w6", type=int, default=1000000)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    rows = load(a.tsv)
    # The W2 build with every line through `sh` is measured against the same make run.
    if "w2.first_sh" in rows and "make" in rows.get("w2.first", {}):
        rows["w2.first_sh"].setdefault("make", rows["w2.first"]["make"])
    n3, mib = a.w3
    gib = a.cache / 1024

    def pipe(id_):
        return rows.get(id_, {}).get("pipe", (None, "failed"))

    def peer(id_, tool):
        return rows.get(id_, {}).get(tool)

    # (id, label, target text, check(pipe value, ratios dict) -> bool|None)
    def lt(limit):
        return lambda p, r: p is not None and p < limit

    def vs(tool, limit):
        return lambda p, r: r.get(tool) is not None and r[tool] <= limit

    def at_least(tool, limit):
        return lambda p, r: r.get(tool) is not None and r[tool] >= limit

    def both(*fs):
        return lambda p, r: all(f(p, r) for f in fs)

    w4_ideal = a.w4[1]
    cases = [
        ("w1.first", f"W1 first build ({a.w1:,} files)", "", None),
        ("w1.status", "W1 no-op status (other: the stat floor)", "< 0.2 s; ≥ 30× faster than DVC; ≤ 1.3× floor",
         both(lt(0.2), vs("dvc", 1 / 30), vs("floor", 1.3))),
        ("w1.build", "W1 no-op build", "", None),
        ("w1.edit_status", "W1 status after editing 1 file", "≥ 20× faster than DVC", vs("dvc", 1 / 20)),
        ("w1.edit_build", "W1 rebuild after editing 1 file", "≥ 20× faster than DVC", vs("dvc", 1 / 20)),
        ("w1.status_rss", "W1 no-op status, peak RSS", "", None),
        ("w2.first", f"W2 first build -j2 ({a.w2:,} + 1 stages; other: hook + --follow on)",
         "≤ 1.1× make; ≥ 50× faster than DVC; features ≤ 1.05×",
         both(vs("make", 1.1), vs("dvc", 1 / 50), at_least("features", 1 / 1.05))),
        ("w2.first_sh", f"W2 first build -j2, every line through sh as make runs it (pipe's own cost)",
         "≤ 1.1× make", vs("make", 1.1)),
        ("w2.status", "W2 no-op status", "< 0.1 s; ≤ 2× make -q", both(lt(0.1), vs("make", 2))),
        ("w2.build", "W2 no-op build (other: hook + --follow on)", "< 0.1 s; ≤ 2× make; features ≤ 1.05×",
         both(lt(0.1), vs("make", 2), at_least("features", 1 / 1.05))),
        ("w3.hash", f"W3 cold hash {n3} × {mib} MiB", "≥ 0.9× b3sum throughput", vs("b3sum", 1 / 0.9)),
        ("w4.build", f"W4 {a.w4[0]} × sleep 1, -j2", f"within 10% of {w4_ideal} s", lt(w4_ideal * 1.1)),
        ("w5.validate", f"W5 parse + validate ({a.w5:,} stages)", "< 1 s", lt(1.0)),
        ("w5.status", f"W5 plan: status / make -n / snakemake -n ({a.w5:,})", "< 1 s; ≤ 2× make -n",
         both(lt(1.0), vs("make", 2))),
        ("w5.validate_rss", "W5 validate, peak RSS", "< 200 MB", lt(200)),
        ("w5.status_rss", "W5 plan, peak RSS", "< 50 MB", lt(50)),
        ("w6.first", f"W6 first build ({a.w6:,} files)", "", None),
        ("w6.status", "W6 no-op status (other: the stat floor)", "", None),
        ("w6.edit_status", "W6 status after editing 1 file", "", None),
        ("w6.status_rss", "W6 no-op status, peak RSS", "", None),
        ("cache.restore", f"Cache: restore a {gib:g} GiB out (others: plain cp)", "", None),
        ("cache.rerun", f"Cache: rerun the stage copying {gib:g} GiB (--force)", "", None),
        ("cache.store", f"Cache: first build storing the out (others: cache = false)", "", None),
    ]
    head = ["case", "pipe"] + [n for _, n in PEERS] + ["other"] + [f"pipe/{n}" for _, n in PEERS] + ["pipe/other", "target", "met"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    misses = []
    for id_, label, target, check in cases:
        if id_ not in rows:
            continue
        p = pipe(id_)
        cells = [label, fmt(*p)]
        ratios = {}
        rtexts = []
        for tool, _ in PEERS:
            q = peer(id_, tool)
            if q is None:
                cells.append("—")
                rtexts.append("—")
                continue
            cells.append(fmt(*q))
            t, r, _ = ratio(p, q)
            rtexts.append(t)
            ratios[tool] = r
        others = [(t, v) for t, v in rows[id_].items() if t in OTHERS]
        cells.append("; ".join(f"{t} {fmt(*v)}" for t, v in others) or "—")
        cells += rtexts
        otexts = []
        for t, v in others:
            txt, r, _ = ratio(p, v)
            ratios[t] = r
            otexts.append(f"{t} {txt}")
        cells.append("; ".join(otexts) or "—")
        cells.append(target or "")
        if check is None:
            cells.append("")
        else:
            ok = check(p[0] if p[1] != "failed" else None, ratios)
            cells.append("yes" if ok else "**no**")
            if not ok:
                misses.append(label)
        out.append("| " + " | ".join(cells) + " |")

    print("## Results\n")
    if a.machine:
        for line in open(a.machine):
            print(f"- {line.rstrip()}")
        print()
    print("Times are medians of hyperfine runs (wall clock); `>` marks a peer stopped at the cap, whose")
    print("ratio is then an upper bound. pipe/peer below 1 means pipe is faster (1/N: N times faster).\n")
    print("\n".join(out))
    print()
    if a.quick:
        print("_Quick mode: sizes are reduced, so the targets (set for the full sizes) are indicative only._\n")
    if misses:
        print("Targets missed in this run: " + "; ".join(misses) + ".\n")
    elif any(c[3] for c in cases):
        print("All targets met in this run.\n")
    if a.notes:
        notes = open(a.notes).read().strip()
        if notes:
            print("### Notes\n")
            print(notes)
            print()
    # Throughputs for W3.
    p, b = pipe("w3.hash"), peer("w3.hash", "b3sum")
    if p[0] and b and b[0]:
        total = n3 * mib
        print(f"W3 throughput: pipe {total / p[0]:.0f} MiB/s, b3sum {total / b[0]:.0f} MiB/s "
              f"(pipe at {b[0] / p[0]:.2f}× b3sum).")
        m = peer("w3.hash", "md5sum")
        if m and m[0]:
            print(f"md5sum {total / m[0]:.0f} MiB/s.")
        print()
    st, ns = pipe("cache.store"), peer("cache.store", "nocache")
    if st[0] and ns and ns[0]:
        print(f"Cost of storing a {gib:g} GiB out in the cache: {st[0] - ns[0]:.2f} s "
              f"({st[0]:.2f} s with the cache against {ns[0]:.2f} s with `cache = false`).")
        r, rr = pipe("cache.restore"), pipe("cache.rerun")
        if r[0] and rr[0]:
            print(f"Restoring it from the cache: {r[0]:.2f} s, against {rr[0]:.2f} s to rerun the stage.")
        print()


if __name__ == "__main__":
    main()
