"""Pictures and reports: the Pareto front as PNG (matplotlib) and interactive HTML (plotly), the study report,
and the final base-vs-retrained report."""

from __future__ import annotations

import html
import json
import warnings
from pathlib import Path
from typing import Any, Sequence

from autoprune.errors import AutopruneError
from autoprune.files import atomic_write, atomic_write_text
from autoprune.optional import require

AXES = {"macs": "MACs", "latency_ms": "latency (ms)", "params": "parameters"}


def front_png(trials: Sequence[dict], front: Sequence[dict], base: dict, path: Path, x: str = "macs",
              chosen: dict | None = None, title: str = "") -> Path:
    """Accuracy against ``x``: every completed trial, the front (line), the base (star), the chosen point (ring)."""
    matplotlib = require("matplotlib", "report", "the front plot (PNG)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([t[x] for t in trials], [t["accuracy"] for t in trials], s=14, c="#9aa5b1", label="trials")
    pts = sorted(front, key=lambda e: e[x])
    ax.plot([e[x] for e in pts], [e["accuracy"] for e in pts], "-o", c="#1f6feb", ms=5, label="Pareto front")
    ax.scatter([base[x]], [base["accuracy"]], marker="*", s=220, c="#d1242f", label="base", zorder=5)
    if chosen is not None:
        ax.scatter([chosen[x]], [chosen["accuracy"]], s=260, facecolors="none", edgecolors="#1a7f37", linewidths=2.5,
                   label=f"chosen (trial {chosen.get('trial')})", zorder=6)
    ax.set_xlabel(AXES.get(x, x))
    ax.set_ylabel("accuracy (validation)")
    ax.set_title(title or f"accuracy vs {AXES.get(x, x)}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def front_plotly(trials: Sequence[dict], front: Sequence[dict], base: dict, x: str, chosen: dict | None = None,
                 div_id: str = "plot") -> str:
    """An interactive plot as an HTML fragment (plotly.js is included once by :func:`html_page`)."""
    go = require("plotly.graph_objects", "report", "the interactive front plot")
    pio = require("plotly.io", "report", "the interactive front plot")

    def hover(e: dict) -> str:
        return (f"trial {e.get('trial', 'base')}<br>acc {e['accuracy']:.4f}<br>MACs {e['macs']:,}<br>"
                f"params {e['params']:,}<br>latency {e['latency_ms']:.3f} ms")

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[t[x] for t in trials], y=[t["accuracy"] for t in trials], mode="markers",
                             name="trials", marker={"color": "#9aa5b1", "size": 6},
                             text=[hover(t) for t in trials], hoverinfo="text"))
    pts = sorted(front, key=lambda e: e[x])
    fig.add_trace(go.Scatter(x=[e[x] for e in pts], y=[e["accuracy"] for e in pts], mode="lines+markers",
                             name="Pareto front", line={"color": "#1f6feb"}, text=[hover(e) for e in pts],
                             hoverinfo="text"))
    fig.add_trace(go.Scatter(x=[base[x]], y=[base["accuracy"]], mode="markers", name="base",
                             marker={"symbol": "star", "size": 16, "color": "#d1242f"}, text=[hover(base)],
                             hoverinfo="text"))
    if chosen is not None:
        fig.add_trace(go.Scatter(x=[chosen[x]], y=[chosen["accuracy"]], mode="markers",
                                 name=f"chosen (trial {chosen.get('trial')})", text=[hover(chosen)], hoverinfo="text",
                                 marker={"size": 18, "color": "rgba(0,0,0,0)", "line": {"color": "#1a7f37", "width": 3}}))
    fig.update_layout(xaxis_title=AXES.get(x, x), yaxis_title="accuracy (validation)", height=420,
                      margin={"l": 60, "r": 20, "t": 30, "b": 50}, template="plotly_white")
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id)


def html_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and abs(v) < 1e-3:
            return f"{v:.2e}"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def html_page(title: str, sections: Sequence[str]) -> str:
    """A self-contained page: plotly.js inlined so it opens offline."""
    pio = require("plotly.io", "report", "the HTML report")
    from plotly.offline import get_plotlyjs

    del pio
    style = ("body{font-family:system-ui,sans-serif;margin:24px;color:#1f2328}table{border-collapse:collapse;"
             "font-size:13px;margin:8px 0 24px}td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:right}"
             "th{background:#f6f8fa}h1{font-size:22px}h2{font-size:17px;margin-top:28px}.note{color:#57606a}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>")


def study_report(ost, out_dir: Path, chosen: dict | None = None) -> dict[str, str]:
    """Front plots (PNG + HTML), the table of trials and parameter importances for a study."""
    import optuna

    from autoprune.engine.storage import StudyAttrs, entries_at, front

    out_dir.mkdir(parents=True, exist_ok=True)
    attrs = StudyAttrs.from_study(ost)
    base = attrs.base
    fr = front(ost)  # at one rung (storage.front); the other candidates are plotted at that rung too
    trials = entries_at(ost, fr[0]["rung"] if fr else None)
    if not trials:
        raise AutopruneError(f"study {ost.study_name!r} has no completed trials to report")
    if chosen is not None:  # ringed where it sits at the front's rung
        chosen = next((e for e in trials if e["trial"] == chosen["trial"]), chosen)
    files = {}
    for x in ("macs", "latency_ms"):
        files[f"front_{x}_png"] = str(front_png(trials, fr, base, out_dir / f"front_{x}.png", x, chosen))
    objectives = attrs.objectives
    importances = {}
    if len(trials) >= 4:
        for i, name in enumerate(objectives):
            sign = -1.0 if ost.directions[i] == optuna.study.StudyDirection.MAXIMIZE else 1.0  # lower = better
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # PED-ANOVA's reminder that lower is better
                    importances[name] = optuna.importance.get_param_importances(
                        ost, target=lambda t, i=i, sign=sign: sign * t.values[i])
            except (RuntimeError, ValueError) as exc:  # too few distinct trials
                importances[name] = {"(not computed)": str(exc)}
    data_note = base.get("data", {}).get("note", "")
    sections = [
        f"<p class='note'>{len(trials)} completed trials, {len(fr)} on the front. Accuracy is on the validation "
        f"split ({html.escape(data_note)}). Base: accuracy {base.get('accuracy', 0):.4f}, "
        f"MACs {base.get('macs', 0):,}, latency {base.get('latency_ms', 0):.3f} ms.</p>",
        "<h2>Accuracy vs MACs</h2>", front_plotly(trials, fr, base, "macs", chosen, "front-macs"),
        "<h2>Accuracy vs latency</h2>", front_plotly(trials, fr, base, "latency_ms", chosen, "front-latency"),
        "<h2>Pareto front</h2>", html_table(fr, ["trial", "accuracy", "macs", "params", "latency_ms", "config"]),
        "<h2>Parameter importances</h2>" + "".join(
            f"<h3>{html.escape(k)}</h3>" + html_table([{"parameter": p, "importance": v} for p, v in imp.items()],
                                                       ["parameter", "importance"]) for k, imp in importances.items()),
        "<h2>All completed trials</h2>", html_table(sorted(trials, key=lambda e: e["trial"]),
                                                     ["trial", "accuracy", "macs", "params", "latency_ms", "config"]),
    ]
    page = out_dir / "study.html"
    atomic_write_text(page, html_page(f"autoprune study {ost.study_name}", sections))
    files["study_html"] = str(page)
    atomic_write_text(out_dir / "study.json", json.dumps({"base": base, "front": fr, "importances": importances,
                                                     "trials": len(trials)}, indent=2, default=str))
    files["study_json"] = str(out_dir / "study.json")
    return files
