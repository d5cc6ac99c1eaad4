"""Rich tables and progress bars for the CLI."""

from __future__ import annotations

from typing import Any, Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

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


def metrics_table(title: str, base: dict[str, Any], rows: Iterable[dict[str, Any]], caption: str = "") -> Table:
    table = Table(title=title, caption=caption or None)
    for col in ("trial", "accuracy", "Δ acc", "MACs", "MACs ↓", "params", "latency ms", "scorer"):
        table.add_column(col, justify="right" if col != "scorer" else "left")
    table.add_row("base", f"{base['accuracy']:.4f}", "", fmt_macs(base["macs"]), "1.00x", f"{base['params']:,}",
                  f"{base['latency_ms']:.3f}", "", style="dim")
    for r in rows:
        table.add_row(
            str(r["trial"]), f"{r['accuracy']:.4f}", f"{(r['accuracy'] - base['accuracy']) * 100:+.2f}",
            fmt_macs(r["macs"]), f"{base['macs'] / max(1, r['macs']):.2f}x", f"{r['params']:,}",
            f"{r['latency_ms']:.3f}", str(r.get("plan", {}).get("scorer", r.get("config", {}).get("scorer", ""))),
        )
    return table
