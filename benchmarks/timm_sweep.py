"""Does autoprune prune your model, whatever its graph? A sweep over timm families (random weights): each model's
groups are built and probed as a search does (a group whose pruning breaks the model is kept whole), the rest
pruned at 0.3 and run. Per model: pruned, pruned with frozen groups (and how much of the MACs stayed prunable),
or refused with the reason; never a raw exception or a silent wait.

    python benchmarks/timm_sweep.py --out benchmarks/results/timm_sweep.json   # ~10 min on two CPU cores

"Prunable MACs": the share of the base model's MACs in layers that pruning every searchable group at 0.5 shrinks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

# One small model per family (beyond the five tests/test_timm.py uses), and the keyword arguments that let it run
# at the sweep's resolution.
FAMILIES: dict[str, dict] = {
    "resnet10t": {}, "resnext26ts": {}, "seresnext26d_32x4d": {}, "regnetx_002": {}, "regnety_002": {},
    "densenet121": {}, "dla34": {}, "dpn48b": {}, "vgg11_bn": {}, "repvgg_a0": {},
    "mobilenetv2_050": {}, "mobilenetv4_conv_small": {}, "mnasnet_050": {}, "fbnetc_100": {}, "ghostnet_050": {},
    "lcnet_050": {}, "hardcorenas_a": {}, "tinynet_e": {}, "efficientnet_lite0": {}, "mixnet_s": {},
    "rexnet_100": {}, "hrnet_w18_small": {}, "cspresnet50": {}, "cspdarknet53": {}, "darknet17": {},
    "dpn68": {}, "res2net50_14w_8s": {}, "resnest14d": {}, "selecsls42b": {}, "skresnet18": {},
    "convmixer_768_32": {}, "levit_128s": {"img_size": 96}, "mobilevit_xxs": {},
    "poolformer_s12": {}, "vit_tiny_patch16_224": {"img_size": 96}, "coat_tiny": {"img_size": 96},
    "efficientformer_l1": {"input": 224},  # attention over a fixed 7 x 7 grid: its own resolution
    "edgenext_xx_small": {}, "fastvit_t8": {},
}
SIZE = 96
RATIO = 0.3


def prunable_share(model, x, layout) -> float:
    """The share of the base MACs in layers that shrink when every searchable group is pruned at 0.5."""
    from autoprune.metrics.costs import count_macs
    from autoprune.pruning.structural import prune_with_plan

    base_total, base = count_macs(model, x, by_module=True)
    pruned, _ = prune_with_plan(model, x, {g: 0.5 for g in layout.names}, "l1", layout=layout)
    _, after = count_macs(pruned, x, by_module=True)
    leaves = {n: m for n, m in base.items() if n and not any(o.startswith(n + ".") for o in base)}
    shrunk = sum(m for n, m in leaves.items() if after.get(n, 0) < m)
    return shrunk / max(1, base_total)


def sweep_one(name: str, kwargs: dict) -> dict:
    import timm

    from autoprune.errors import AutopruneError
    from autoprune.metrics.costs import count_macs
    from autoprune.pruning.prunability import freeze_unprunable
    from autoprune.pruning.structural import build_layout, prune_with_plan

    t0 = time.perf_counter()
    row: dict = {"model": name}
    try:
        size = kwargs.pop("input", SIZE)
        model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
        x = torch.randn(1, 3, size, size)
        full = build_layout(model, x)
        layout, frozen = freeze_unprunable(model, x, full)
        pruned, _ = prune_with_plan(model, x, {g: RATIO for g in layout.names}, "l1", layout=layout)
        out = pruned(x)
        assert out.shape == (1, 10), f"pruned output {tuple(out.shape)}"
        base_macs = count_macs(model, x)
        row.update(status="pruned with frozen groups" if frozen else "pruned", groups=len(full.names),
                   frozen=len(frozen), frozen_why=list(frozen.values())[:2],
                   prunable_macs=prunable_share(model, x, layout),
                   macs_reduction_at_0_3=base_macs / max(1, count_macs(pruned, x)))
    except AutopruneError as err:
        row.update(status="refused", reason=err.one_line())
    except Exception as exc:  # noqa: BLE001 - a raw exception is what the sweep is here to find
        row.update(status="raw exception", reason=f"{type(exc).__name__}: {exc}"[:300],
                   where=traceback.format_exc().splitlines()[-3:])
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _in_process(name: str, limit: float = 1200.0) -> dict:
    """:func:`sweep_one` in a child process; a child past ``limit`` (the sweep's own bound, above autoprune's) is a
    row that says so."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"model": name, "status": "silent wait", "reason": f"no answer in {limit:g} s", "seconds": limit}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"model": name, "status": "raw exception", "reason": done.stderr.strip().splitlines()[-1][:300],
                "seconds": round(time.perf_counter() - t0, 1)}
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    lines = ["| model | result | groups | frozen | prunable MACs | MACs reduction at 0.3 | s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = f"{100 * r['prunable_macs']:.0f} %" if "prunable_macs" in r else "-"
        red = f"{r['macs_reduction_at_0_3']:.2f}x" if "macs_reduction_at_0_3" in r else "-"
        what = r["status"] + (f": {r['reason']}" if "reason" in r else "")
        lines.append(f"| {r['model']} | {what} | {r.get('groups', '-')} | {r.get('frozen', '-')} | {share} | {red} | "
                     f"{r['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/timm_sweep.json")
    parser.add_argument("--only", nargs="*", help="these models only")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.one:  # one model, in its own process: a torch-pruning thread left past the time bound dies with it
        print(json.dumps(sweep_one(args.one, dict(FAMILIES[args.one]))))
        return
    rows = []
    for name in FAMILIES:
        if args.only and name not in args.only:
            continue
        rows.append(_in_process(name))
        r = rows[-1]
        print(f"{name}: {r['status']} {r.get('reason', '')} ({r['seconds']} s)", flush=True)
    searchable = [r for r in rows if r["status"].startswith("pruned") and r["prunable_macs"] >= 0.2]
    summary = {"models": len(rows), "searchable_with_20pct_prunable": len(searchable),
               "share": len(searchable) / max(1, len(rows)),
               "raw_exceptions": sum(r["status"] == "raw exception" for r in rows)}
    Path(args.out).write_text(json.dumps({"summary": summary, "size": SIZE, "ratio": RATIO, "rows": rows}, indent=2))
    print(table(rows))
    print(json.dumps(summary))
    sys.exit(1 if summary["raw_exceptions"] else 0)


if __name__ == "__main__":
    main()
