"""Rich tables and progress bars for the CLI."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from autoprune.engine.record import TrialRecord
from autoprune.metrics.latency import NOISY_DISPERSION, RETRY_FACTOR

console = Console(stderr=True)  # human output goes to stderr so --json stdout stays clean


def fmt_macs(macs: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if macs >= div:
            return f"{macs / div:.2f} {unit}"
    return f"{macs:.0f}"


def search_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("front: {task.fields[front]}"), TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
    )


def steps_progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


UNRELIABLE_NOTE = (f"? latency unreliable: the machine was contended while it was measured (the paired ratios' "
                   f"dispersion stayed above {NOISY_DISPERSION} even with {RETRY_FACTOR}x the pairs); measure again "
                   "on a quieter machine")


def latency_mark(reliable: bool | None) -> str:
    """``?`` for a latency measured on a contended machine (too noisy to trust), else nothing."""
    return "?" if reliable is False else ""


def _latency_cells(r: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """A trial's "ms" and "faster" cells: the speed-up over the base measured paired with it in the same window
    where recorded, else the base's own measurement over the trial's, marked ``~`` (unpaired); ``?`` marks a
    latency measured on a contended machine."""
    mark = latency_mark(r.get("latency_reliable"))
    ratio = r.get("latency_ratio")
    if ratio:
        faster = f"{1.0 / ratio:.2f}x"
    else:
        faster = f"~{base['latency_ms'] / r['latency_ms']:.2f}x" if r["latency_ms"] > 0 else ""
    return [f"{r['latency_ms']:.3f}{mark}", f"{faster}{mark}" if faster else ""]


def _latency_caption(base: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Which runtime the latencies were measured on, and what ``?`` and ``~`` mean where a row has them."""
    backends = {(r.get("plan") or {}).get("latency_backend") for r in rows} | {base.get("latency_backend")}
    backends.discard(None)
    parts = [f"latency on {', '.join(sorted(backends))}"] if backends else []
    if any(r.get("latency_reliable") is False for r in rows) or base.get("latency_reliable") is False:
        parts.append("? latency unreliable: the machine was contended while it was measured")
    if any(not r.get("latency_ratio") and r["latency_ms"] > 0 for r in rows):
        parts.append("~ unpaired speed-up: the trial and the base were timed at different times")
    return "; ".join(parts)


def paired_latency_text(f: Mapping[str, Any], against_base: bool = True) -> str:
    """A paired latency (:func:`autoprune.metrics.costs.paired_fields`) in words: the ms, with ``against_base`` the paired
    speed-up over the base (else the base timed against itself), the backend and the dispersion; ``?`` marks each
    figure of an unreliable measurement.

    >>> f = {"latency_ms": 0.5, "base_latency_ms": 1.0, "latency_speedup": 2.0, "latency_reliable": False,
    ...      "latency_backend": "torch", "latency_dispersion": 0.8}
    >>> paired_latency_text(f)
    'latency 0.500? ms, 2.00x? faster than the base (1.000? ms) timed paired with it on torch, dispersion 0.800'
    """
    mark = latency_mark(f["latency_reliable"])
    text = f"latency {f['latency_ms']:.3f}{mark} ms"
    if against_base and f.get("latency_speedup"):
        text += (f", {f['latency_speedup']:.2f}x{mark} faster than the base ({f['base_latency_ms']:.3f}{mark} ms) "
                 "timed paired with it")
    elif not against_base:
        text += ", timed paired with itself"
    return f"{text} on {f['latency_backend']}, dispersion {f['latency_dispersion']:.3f}"


def retrain_summary(report: Mapping[str, Any]) -> list[str]:
    """``retrain``'s closing lines from :func:`autoprune.deliver.finalize.finalize`'s report: test accuracy, MACs and the
    latency speed-up at each batch size, paired with the base (``?`` and a note where the machine was contended;
    ``~`` where a report has no paired measurement)."""
    b, f, sp = report["base"], report["final"], report["speedup"]
    paired = {k: v for k, v in (report.get("latency") or {}).items() if isinstance(v, Mapping)}
    speeds = []
    for key in sorted(k for k in sp if k.startswith("latency_speedup_")):
        batch = key.removeprefix("latency_speedup_")
        lat = paired.get(batch)
        mark = latency_mark(lat.get("reliable")) if lat else ""
        speeds.append(f"{batch} {'' if lat else '~'}{sp[key]:.2f}x{mark}")
    how = (f"paired with the base on {report['latency']['backend']}" if paired
           else "unpaired: base and model timed at different times")
    lines = [f"test accuracy: base {b['test_accuracy']:.4f} -> retrained {f['test_accuracy']:.4f}; "
             f"MACs {b['macs']:,} -> {f['macs']:,} ({sp['macs_reduction']:.2f}x fewer); "
             f"latency {', '.join(speeds)} faster ({how})"]
    if any(v.get("reliable") is False for v in paired.values()):
        lines.append(UNRELIABLE_NOTE)
    return lines


def metrics_table(title: str, base: dict[str, Any], rows: Iterable[dict[str, Any]], caption: str = "") -> Table:
    rows = list(rows)
    caption = "; ".join(c for c in (caption, _latency_caption(base, rows)) if c)
    table = Table(title=title, caption=caption or None)
    # "faster": the measured latency speed-up over the base, to read beside the MACs reduction
    # a column of the fine-tune steps behind each accuracy (the rung) where the study has several rungs
    promoted = any((r.get("fidelity") or {}).get("promoted") or len((r.get("fidelity") or {}).get("scores") or {}) > 1
                   for r in rows)
    cols = ["trial", "accuracy", "MACs", "MACs ↓", "params", "ms", "faster"] + (["steps"] if promoted else []) + ["scorer"]
    for col in cols:
        table.add_column(col, justify="right" if col != "scorer" else "left", no_wrap=col != "scorer")
    base_mark = "?" if base.get("latency_reliable") is False else ""
    table.add_row("base", f"{base['accuracy']:.4f}", fmt_macs(base["macs"]), "1.00x", f"{base['params']:,}",
                  f"{base['latency_ms']:.3f}{base_mark}", "1.00x", *([""] if promoted else []), "", style="dim")
    for r in rows:
        fid = r.get("fidelity") or {}
        rung = r.get("rung", fid.get("steps", ""))
        steps = [f"{rung}{'*' if fid.get('promoted') and rung != fid.get('steps') else ''}"] if promoted else []
        table.add_row(
            str(r["trial"]), f"{r['accuracy']:.4f}", fmt_macs(r["macs"]), f"{base['macs'] / max(1, r['macs']):.2f}x",
            f"{r['params']:,}", *_latency_cells(r, base), *steps,
            str(r.get("plan", {}).get("scorer", r.get("config", {}).get("scorer", ""))),
        )
    return table


def cost_table(cost: dict[str, Any]) -> Table:
    """Where the study's time went (see :func:`autoprune.engine.status.cost_summary`)."""
    table = Table(title=f"time over {cost['trials']} trials", caption=(
        f"fine-tune budget: {cost['finetune_steps']:,} steps, {cost['finetune_images']:,} images; "
        f"everything but the fine-tune: {cost['overhead_share'] * 100:.1f} % of trial time"
        + _promotion_note(cost.get("promotion") or {})))
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for phase, secs in cost["time_s"].items():
        share = cost["share"].get(phase, 1.0 if phase == "total" else 0.0)
        table.add_row(phase, f"{secs:.1f}", f"{share * 100:.1f} %", style="bold" if phase == "total" else None)
    return table


def _promotion_note(p: dict[str, Any]) -> str:
    if not p.get("promoted"):
        return ""
    tau = p.get("kendall_tau")
    corr = f", Kendall tau first vs highest rung {tau:+.2f} (p {p['p_value']:.3f})" if tau is not None else ""
    return f"; {p['promoted']} trials promoted past their first rung{corr}"


class SearchMonitor:
    """Keeps a search progress bar in step with the study's storage (one trial listing per refresh)."""

    def __init__(self, bar: Progress, budget: int, base_macs: int, directions: list[str], objectives: list[str],
                 min_interval: float = 0.5) -> None:
        self.bar, self.budget, self.base_macs = bar, budget, base_macs
        self.directions, self.objectives = directions, objectives
        self.task = bar.add_task("search", total=budget, front=0, last="")
        self.seen: set[int] = set()
        self.min_interval = min_interval
        self._last_refresh = 0.0

    def describe(self, r: TrialRecord) -> str:
        if r.metrics is not None:
            return f"acc {r.metrics.accuracy:.3f}, {self.base_macs / max(1, r.metrics.macs):.2f}x fewer MACs"
        return f"{r.state}: {r.failure.reason if r.failure else ''}"

    def refresh(self, ost, force: bool = False) -> None:
        import time

        from autoprune.engine.storage import feasible
        from autoprune.pareto import non_dominated

        now = time.monotonic()
        if not force and now - self._last_refresh < self.min_interval:
            return
        self._last_refresh = now
        trials = ost.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        feasible_ = [t for t in complete if feasible(t)]
        front = non_dominated([t.values for t in feasible_], self.directions)
        last = ""
        for t in trials:
            if not t.state.is_finished() or t.number in self.seen:
                continue
            r = TrialRecord.from_frozen(t)
            if r.skipped is None:
                self.seen.add(t.number)
                last = f"last: {self.describe(r)}"
                if not console.is_terminal:  # logs and CI: one line per trial instead of a live bar
                    console.print(f"trial {t.number}: {t.state.name} {self.describe(r)} "
                                  f"({len(complete)}/{self.budget} complete)")
        self.bar.update(self.task, completed=min(self.budget, len(complete)), front=len(front),
                        **({"last": last} if last else {}))
