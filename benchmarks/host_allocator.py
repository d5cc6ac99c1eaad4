"""Training steps on large CPU activations under three settings of glibc's allocator, side by side.

Usage: python benchmarks/host_allocator.py [--steps 10] [--repeats 2] [--out FILE]

Each run is a fresh process (glibc reads its tunables at start) that trains the quickstart CNN (3 input channels)
for ``--steps`` SGD steps at batch 64 on 96 px inputs, after two warm-up steps, and reports the wall time, the
system CPU time, the minor page faults of the timed steps and the process's peak RSS. Settings, alternated
``--repeats`` times:

* ``default``: glibc as it is (every allocation over 32 MB mapped afresh and unmapped on free);
* ``hugetlb``: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, what the ``autoprune`` command sets
  (:mod:`autoprune.cli.huge_pages`): the same mappings on transparent huge pages;
* ``mmap_threshold``: ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` at 4 GB: large blocks stay in the
  heap and are reused (the alternative that was not taken: it holds more memory).

Prints one JSON object (also written to ``--out``); medians per setting. Linux with glibc 2.35+ only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = {
    "default": {},
    "hugetlb": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "mmap_threshold": {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)},
}

RUN = """
import json, resource, sys, time, torch
from autoprune.models.factory import QuickstartCNN
torch.manual_seed(0)
m = QuickstartCNN(num_classes=4, in_channels=3)
opt = torch.optim.SGD(m.parameters(), lr=0.01)
x, y = torch.randn(64, 3, 96, 96), torch.randint(0, 4, (64,))
def step():
    opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
for _ in range(2):
    step()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(int(sys.argv[1])):
    step()
wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": wall, "sys_s": r1.ru_stime - r0.ru_stime, "minor_faults": r1.ru_minflt - r0.ru_minflt,
                  "peak_rss_mb": r1.ru_maxrss / 1024}))
"""


def run(setting: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_",
                                                           "MALLOC_TRIM_THRESHOLD_")}
    proc = subprocess.run([sys.executable, "-c", RUN, str(steps)], env={**env, **SETTINGS[setting]},
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise SystemExit(f"{setting} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for _ in range(args.repeats):
        for s in SETTINGS:
            runs[s].append(run(s, args.steps))
            print(s, runs[s][-1], file=sys.stderr, flush=True)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    result = {"steps": args.steps, "batch": 64, "image_px": 96, "repeats": args.repeats,
              "thp": thp.read_text().strip() if thp.is_file() else None,
              "median": {s: {k: round(statistics.median(r[k] for r in rs), 2) for k in rs[0]} for s, rs in runs.items()},
              "runs": runs}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
