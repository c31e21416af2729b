#!/usr/bin/env python3
"""Write a 1,000-stage Pipeline.toml into DIR for timing `pipe report` (docs/performance.md).

Stage i reads one or two of the 30 stages before it and writes a few bytes (their size
and its number: outputs stay tiny), seeded so the graph is the same every time; a gated
metrics stage ends it.
"""
import os
import random
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "big-1000"
os.makedirs(out, exist_ok=True)
random.seed(7)
parts = ['[pipeline]\nname = "big-1000"\n']
for i in range(1000):
    deps = set()
    if i > 0:
        for _ in range(random.choice([1, 1, 2])):
            deps.add(random.randrange(max(0, i - 30), i))
    deps = sorted(deps)
    srcs = " ".join(f"o/{d}" for d in deps) or "/dev/null"
    text = f'[stages.s{i:04d}]\ncmd = "cat {srcs} | wc -c > o/{i}; echo {i} >> o/{i}"\n'
    if deps:
        text += "deps = [" + ", ".join(f'"o/{d}"' for d in deps) + "]\n"
    text += f'outs = ["o/{i}"]\n'
    parts.append(text)
parts.append('''[stages.score]
cmd = "echo '{\\"acc\\": 0.91}' > m.json"
deps = ["o/999"]
outs = ["m.json"]
metrics = ["m.json"]
[stages.score.gate]
file = "m.json"
checks = ["acc >= 0.9"]
''')
with open(os.path.join(out, "Pipeline.toml"), "w") as f:
    f.write("\n".join(parts))
