#!/usr/bin/env python3
"""Workload generator for benches/run.sh.

Each workload is one folder per tool (pipe, make, dvc, smk) holding the same inputs and a
pipeline file for that tool that does the same work: same commands, same deps, same outs.
Big inputs are shared between the tool folders through hard links (never edited in place
by more than one tool's measurements at a time: run.sh measures tool by tool).

Usage: gen.py WORKLOAD DIR [options]   (see `gen.py -h`)
"""

import argparse
import os
import shutil
import subprocess
import sys

TOOLS = ("pipe", "make", "dvc", "smk")


def write(path, text):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def toml_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def yaml_str(s):
    return "'" + s.replace("'", "''") + "'"


class Stage:
    """One stage: a shell command, the files it reads and the files it writes."""

    def __init__(self, name, cmd, deps, outs):
        self.name, self.cmd, self.deps, self.outs = name, cmd, deps, outs


def pipeline_toml(stages):
    lines = []
    for s in stages:
        lines.append(f"[stages.{s.name}]")
        lines.append(f"cmd = {toml_str(s.cmd)}")
        lines.append("deps = [" + ", ".join(toml_str(d) for d in s.deps) + "]")
        lines.append("outs = [" + ", ".join(toml_str(o) for o in s.outs) + "]")
        lines.append("")
    return "\n".join(lines)


def makefile(stages, make_deps=None):
    """A Makefile; `make_deps` maps a folder dep to the make expression listing its files
    (make compares timestamps of files, not folders)."""
    make_deps = make_deps or {}
    finals = [o for s in stages for o in s.outs]
    # No built-in implicit rules: with them make looks for a way to remake each of the
    # 100,000 data files (RCS, SCCS, ...) and a no-op takes seconds instead of milliseconds.
    lines = ["MAKEFLAGS += --no-builtin-rules", ".SUFFIXES:", ".PHONY: all", "all: " + " ".join(finals), ""]
    for s in stages:
        deps = " ".join(make_deps.get(d, d) for d in s.deps)
        target = s.outs[0]
        if len(s.outs) > 1:
            lines.append(" ".join(s.outs[1:]) + f": {target}")
        lines.append(f"{target}: {deps}")
        # Out folders are made by run.sh before each build, for every tool alike.
        lines.append(f"\t@{s.cmd.replace('$', '$$')}")
        lines.append("")
    return "\n".join(lines)


def dvc_yaml(stages):
    lines = ["stages:"]
    for s in stages:
        lines.append(f"  {s.name}:")
        lines.append(f"    cmd: {yaml_str(s.cmd)}")
        if s.deps:
            lines.append("    deps:")
            lines += [f"    - {yaml_str(d)}" for d in s.deps]
        lines.append("    outs:")
        lines += [f"    - {yaml_str(o)}" for o in s.outs]
    return "\n".join(lines) + "\n"


def snakefile(stages, smk_deps=None):
    """A Snakefile; `smk_deps` maps a folder dep to a Python expression listing its files."""
    smk_deps = smk_deps or {}
    finals = [o for s in stages for o in s.outs]
    lines = ["import glob", "", "rule all:", "    input:"]
    lines += [f"        {o!r}," for o in finals]
    lines.append("")
    for s in stages:
        lines.append(f"rule {s.name}:")
        if s.deps:
            lines.append("    input:")
            for d in s.deps:
                lines.append(f"        {smk_deps[d]}," if d in smk_deps else f"        {d!r},")
        lines.append("    output:")
        lines += [f"        {o!r}," for o in s.outs]
        # Snakemake's shell() formats {..}: double the braces of the literal command.
        cmd = s.cmd.replace("{", "{{").replace("}", "}}")
        lines.append(f"    shell: {cmd!r}")
        lines.append("")
    return "\n".join(lines)


def emit(dir_, stages, make_deps=None, smk_deps=None, tools=TOOLS):
    """Write the four pipeline files into DIR/<tool>/."""
    for t in tools:
        d = os.path.join(dir_, t)
        # Out folders exist before every tool's first build (DVC and make do not make them).
        os.makedirs(os.path.join(d, "out"), exist_ok=True)
        if t == "pipe":
            write(os.path.join(d, "Pipeline.toml"), pipeline_toml(stages))
        elif t == "make":
            write(os.path.join(d, "Makefile"), makefile(stages, make_deps))
        elif t == "dvc":
            write(os.path.join(d, "dvc.yaml"), dvc_yaml(stages))
        elif t == "smk":
            write(os.path.join(d, "Snakefile"), snakefile(stages, smk_deps))


def link_inputs(dir_, rel, tools=TOOLS):
    """Hard-link DIR/inputs/REL into every tool folder (fast, no extra disk)."""
    src = os.path.join(dir_, "inputs", rel)
    for t in tools:
        dst = os.path.join(dir_, t, rel)
        if os.path.exists(dst):
            shutil.rmtree(dst) if os.path.isdir(dst) else os.remove(dst)
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        subprocess.run(["cp", "-al", src, dst], check=True)


def random_block(n):
    return os.urandom(n)


# --- workloads -------------------------------------------------------------------------


def w1(a):
    """W1 big dataset: FILES files of ~1 KiB in DIRS folders, dep of a 3-stage pipeline."""
    per = a.files // a.dirs
    blk = random_block(1 << 20)
    for d in range(a.dirs):
        dd = os.path.join(a.dir, "inputs", "data", f"d{d:03}")
        os.makedirs(dd, exist_ok=True)
        for f in range(per):
            off = (d * per + f) * 61 % (len(blk) - 1100)
            with open(os.path.join(dd, f"f{f:04}.txt"), "wb") as fh:
                fh.write(blk[off : off + 1024])
    stages = [
        Stage("s1", "du -sb data | cut -f1 > out/s1.txt", ["data"], ["out/s1.txt"]),
        Stage("s2", "cat out/s1.txt out/s1.txt > out/s2.txt", ["out/s1.txt"], ["out/s2.txt"]),
        Stage("s3", "cat out/s2.txt out/s2.txt > out/s3.txt", ["out/s2.txt"], ["out/s3.txt"]),
    ]
    emit(
        a.dir,
        stages,
        make_deps={"data": "$(wildcard data/*/*.txt)"},
        smk_deps={"data": 'sorted(glob.glob("data/*/*.txt"))'},
    )
    link_inputs(a.dir, "data", a.tools or TOOLS)


def w2(a):
    """W2 wide DAG: N independent stages plus one fan-in stage."""
    for i in range(a.stages):
        write(os.path.join(a.dir, "inputs", "in", f"{i:04}.txt"), f"input {i}\n" * 8)
    stages = [
        Stage(f"s{i:04}", f"tr a-z A-Z < in/{i:04}.txt > out/{i:04}.txt", [f"in/{i:04}.txt"], [f"out/{i:04}.txt"])
        for i in range(a.stages)
    ]
    stages.append(
        Stage("fanin", "cat out/*.txt > all.txt", [f"out/{i:04}.txt" for i in range(a.stages)], ["all.txt"])
    )
    emit(a.dir, stages)
    link_inputs(a.dir, "in")


def w3(a):
    """W3 large files: COUNT random files of SIZE MiB as deps of one stage."""
    os.makedirs(os.path.join(a.dir, "inputs", "big"), exist_ok=True)
    chunk = 16 << 20
    for i in range(a.count):
        p = os.path.join(a.dir, "inputs", "big", f"f{i}.bin")
        with open(p, "wb") as fh:
            left = a.size << 20
            while left > 0:
                n = min(chunk, left)
                fh.write(os.urandom(n))
                left -= n
    deps = [f"big/f{i}.bin" for i in range(a.count)]
    stages = [Stage("list", "ls -l big > out/list.txt", deps, ["out/list.txt"])]
    emit(a.dir, stages, tools=("pipe", "dvc"))
    link_inputs(a.dir, "big", tools=("pipe", "dvc"))


def w4(a):
    """W4 parallel: N independent `sleep 1` stages."""
    stages = [
        Stage(f"s{i}", f"sleep 1 && echo {i} > out/s{i}.txt", ["in.txt"], [f"out/s{i}.txt"]) for i in range(a.stages)
    ]
    write(os.path.join(a.dir, "inputs", "in.txt"), "go\n")
    emit(a.dir, stages)
    link_inputs(a.dir, "in.txt")


def w5(a):
    """W5 scale: GROUPS groups of 20 stages: a root, a chain of 9, a fan-out of 10."""
    stages = []
    for g in range(a.groups):
        src = f"src/g{g:04}.txt"
        write(os.path.join(a.dir, "inputs", src), f"group {g}\n")
        root = Stage(f"g{g:04}_root", f"cp {src} out/g{g:04}/root.txt", [src], [f"out/g{g:04}/root.txt"])
        stages.append(root)
        prev = root.outs[0]
        for k in range(1, 10):
            o = f"out/g{g:04}/c{k}.txt"
            stages.append(Stage(f"g{g:04}_c{k}", f"cp {prev} {o}", [prev], [o]))
            prev = o
        for k in range(10):
            o = f"out/g{g:04}/f{k}.txt"
            stages.append(Stage(f"g{g:04}_f{k}", f"cp {prev} {o}", [prev], [o]))
    emit(a.dir, stages)
    link_inputs(a.dir, "src")


def cache(a):
    """Cache: a stage that copies a SIZE MiB file; one folder with the cache on, one off."""
    os.makedirs(os.path.join(a.dir, "inputs"), exist_ok=True)
    p = os.path.join(a.dir, "inputs", "big.bin")
    if a.source:
        # Concatenate existing random files (faster than drawing fresh random bytes).
        with open(p, "wb") as out:
            left = a.size << 20
            for src in a.source:
                with open(src, "rb") as fh:
                    while left > 0:
                        b = fh.read(min(16 << 20, left))
                        if not b:
                            break
                        out.write(b)
                        left -= len(b)
            while left > 0:
                n = min(16 << 20, left)
                out.write(os.urandom(n))
                left -= n
    else:
        with open(p, "wb") as fh:
            left = a.size << 20
            while left > 0:
                n = min(16 << 20, left)
                fh.write(os.urandom(n))
                left -= n
    stages = [Stage("copy", "cp big.bin out/big.bin", ["big.bin"], ["out/big.bin"])]
    emit(a.dir, stages, tools=("pipe", "dvc"))
    # The same stage with `cache = false`: the cost of storing outs is the difference.
    d = os.path.join(a.dir, "pipe-nocache")
    os.makedirs(os.path.join(d, "out"), exist_ok=True)
    write(os.path.join(d, "Pipeline.toml"), pipeline_toml(stages).replace('outs = ["out/big.bin"]', 'outs = ["out/big.bin"]\ncache = false'))
    link_inputs(a.dir, "big.bin", tools=("pipe", "dvc", "pipe-nocache"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="workload", required=True)
    p = sub.add_parser("w1")
    p.add_argument("dir")
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--dirs", type=int, default=100)
    p.add_argument("--tools", nargs="*", help="tool folders to make (default: all)")
    p = sub.add_parser("w2")
    p.add_argument("dir")
    p.add_argument("--stages", type=int, default=1000)
    p = sub.add_parser("w3")
    p.add_argument("dir")
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--size", type=int, default=512, help="MiB per file")
    p = sub.add_parser("w4")
    p.add_argument("dir")
    p.add_argument("--stages", type=int, default=8)
    p = sub.add_parser("w5")
    p.add_argument("dir")
    p.add_argument("--groups", type=int, default=500)
    p = sub.add_parser("cache")
    p.add_argument("dir")
    p.add_argument("--size", type=int, default=1024, help="MiB")
    p.add_argument("--source", nargs="*", help="random files to take the bytes from")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    globals()[a.workload](a)


if __name__ == "__main__":
    sys.exit(main())
