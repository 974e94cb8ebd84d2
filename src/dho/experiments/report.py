"""The report of a finished sweep: its tables (:mod:`dho.experiments.tables`) and plots, accuracy vs shots,
the alpha/beta mixing grid, head agreement and gradient conflict, gathered in ``report.md``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import write_csv_atomic, write_text_atomic
from .tables import (
    LABELS,
    METHOD_ORDER,
    RESULT_COLUMNS,
    conflict_records,
    conflict_table,
    load_results,
    merge_results,
    method_key,
    read_json,
    shots_label,
    summary_table,
    teacher_labels,
    write_tables,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "METHOD_ORDER", "conflict_table", "load_results", "plot_accuracy_vs_shots", "plot_agreement", "plot_conflict",
    "plot_mixing_heatmap", "shots_label", "summary_table", "write_report", "write_tables",
]

log = logging.getLogger(__name__)

_AGREEMENT = (("both_right", "both right", "#55A868"), ("only_ce", "only CE head", "#4C72B0"),
              ("only_kd", "only KD head", "#DD8452"), ("both_wrong", "both wrong", "#C44E52"))
_CONFLICT = (("cos_params", "cos(g_CE, g_KD) on parameters"), ("cos_features", "cos(g_CE, g_KD) on features"),
             ("pred_term", "prediction term"))


# ---- plots ----------------------------------------------------------------------------------
def _figure(figsize: tuple[float, float]) -> Any:
    """A figure outside pyplot's global state: drawn and saved without choosing a backend."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=120)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    log.info("wrote %s", path)
    return path


def _shots_axis(ax: Axes, shots: list[int | float]) -> None:
    """log2 axis for K-shot sweeps, log10 for labeled fractions spanning a decade, else linear."""
    if all(isinstance(s, int) and s >= 1 for s in shots):
        ax.set_xscale("log", base=2)
    elif min(shots) > 0 and max(shots) / min(shots) >= 10:
        ax.set_xscale("log")
    ax.set_xticks(shots)
    ax.set_xticklabels([f"{100 * s:g}%" if isinstance(s, float) and s < 1 else f"{s:g}" for s in shots])
    ax.minorticks_off()


def plot_accuracy_vs_shots(rows: list[dict], path: Path | str) -> Path | None:
    """Test accuracy (%) vs shots, one line per method (the teacher dashed grey), error bars of
    the std over seeds where there are several; one subplot per teacher."""
    summary = summary_table(rows)
    if not summary:
        log.warning("no test accuracies; %s not written", path)
        return None
    from matplotlib import colormaps

    teachers = teacher_labels(summary)
    methods = sorted({e["method"] for e in summary}, key=method_key)
    colours = {m: colormaps["tab10"](i % 10) for i, m in enumerate(m for m in methods if m != "teacher")}
    fig = _figure((6 * len(teachers), 4.2))
    axes = fig.subplots(1, len(teachers), sharey=True, squeeze=False)
    for ax, teacher in zip(axes[0], teachers):
        for m in methods:
            line = [e for e in summary if e["teacher"] == teacher and e["method"] == m]
            if not line:
                continue
            x, y = [e["shots"] for e in line], [e["mean"] for e in line]
            yerr = [e["std"] for e in line] if any(e["n"] > 1 for e in line) else None
            style = {"color": "#999999", "linestyle": "--"} if m == "teacher" else {"color": colours[m], "marker": "o"}
            ax.errorbar(x, y, yerr=yerr, capsize=3, label=LABELS.get(m, m), **style)
        _shots_axis(ax, sorted({e["shots"] for e in summary if e["teacher"] == teacher}))
        ax.set_title(f"teacher: {teacher}")
        ax.set_xlabel("labeled shots per class" if all(isinstance(e["shots"], int) for e in summary) else "labeled data")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=8, loc="best")
    return _save(fig, path)


def _read_grid(path: Path) -> tuple[list[float], list[float], list[list[float]]]:
    """alphas [A], betas [B] and validation accuracy in percent [B][A] (nan where missing)."""
    with path.open(newline="") as fh:
        points = {(float(r["alpha"]), float(r["beta"])): 100 * float(r["accuracy"]) for r in csv.DictReader(fh)}
    alphas = sorted({a for a, _ in points})
    betas = sorted({b for _, b in points})
    return alphas, betas, [[points.get((a, b), math.nan) for a in alphas] for b in betas]


def _nearest(values: list[float], x: float) -> int:
    return min(range(len(values)), key=lambda i: abs(values[i] - x))


def plot_mixing_heatmap(run_dir: Path | str, path: Path | str) -> Path | None:
    """Validation accuracy (%) over the alpha x beta mixing grid of one dual-head run (alpha on x,
    beta on y), with the alpha/beta chosen in ``results.json`` and the grid's maximum marked.
    Returns None, with a warning, when the run has no ``mixing_grid.csv``."""
    run_dir = Path(run_dir)
    grid_path = run_dir / "mixing_grid.csv"
    if not grid_path.is_file():
        log.warning("%s missing; mixing heat map skipped", grid_path)
        return None
    alphas, betas, grid = _read_grid(grid_path)
    fig = _figure((8, 4))
    ax = fig.subplots()
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label="validation accuracy (%)")
    step = max(1, len(alphas) // 5)
    ax.set_xticks(range(0, len(alphas), step), [f"{a:g}" for a in alphas[::step]])
    ax.set_yticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set_xlabel("alpha (weight of the CE head)")
    ax.set_ylabel("beta (temperature)")
    flat = [(v, i, j) for j, row in enumerate(grid) for i, v in enumerate(row) if not math.isnan(v)]
    best, bi, bj = max(flat)
    ax.plot(bi, bj, "o", markerfacecolor="none", markeredgecolor="white", markersize=12)
    ax.annotate(f"max {best:.1f}", (bi, bj), xytext=(8, 8), textcoords="offset points", fontsize=9,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.8})
    results = read_json(run_dir / "results.json") or {}
    if results.get("alpha") is not None and results.get("beta") is not None:
        ci, cj = _nearest(alphas, results["alpha"]), _nearest(betas, results["beta"])
        ax.plot(ci, cj, "*", color="red", markeredgecolor="white", markersize=14,
                label=f"chosen alpha={results['alpha']:g}, beta={results['beta']:g}")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"{results.get('method', run_dir.name)}: validation accuracy over the mixing grid")
    return _save(fig, path)


def _agreement_runs(rows_or_run_dirs: Iterable[Mapping[str, Any]] | Iterable[str | Path]) -> list[tuple[str, Path]]:
    """(label, run dir) from result rows ("dho 16-shot"), a {label: run dir} mapping, or run dirs."""
    if isinstance(rows_or_run_dirs, Mapping):
        return [(label, Path(d)) for label, d in rows_or_run_dirs.items()]
    items = list(rows_or_run_dirs)
    if not all(isinstance(i, Mapping) for i in items):
        return [(Path(d).name, Path(d)) for d in items if isinstance(d, (str, Path))]
    rows = [r for r in items if isinstance(r, Mapping) and r.get("run_dir")]
    many_teachers = len({r["teacher"] for r in rows}) > 1
    many_seeds = len({r["seed"] for r in rows}) > 1
    out = []
    for r in rows:
        label = f"{r['method']} {shots_label(r['shots'])}"
        if many_seeds:
            label += f" s{r['seed']}"
        if many_teachers:
            label += f"\n{r['teacher']}"
        out.append((label, Path(r["run_dir"])))
    return out


def plot_agreement(rows_or_run_dirs: Iterable[dict] | Mapping[str, Path] | Iterable[Path], path: Path | str) -> Path | None:
    """Stacked bars of head agreement on the test split (both right / only CE head / only KD head /
    both wrong, in % of the test images), one bar per dual-head run. Runs without agreement counts
    in ``results.json`` are skipped; returns None when none has them."""
    bars = []
    for label, run_dir in _agreement_runs(rows_or_run_dirs):
        test = (read_json(run_dir / "results.json") or {}).get("test") or {}
        counts = test.get("agreement")
        if not counts:
            log.warning("%s has no head agreement in results.json; skipped", run_dir)
            continue
        n = test.get("n") or sum(counts.values())
        bars.append((label, [100 * counts.get(key, 0) / n for key, _, _ in _AGREEMENT]))
    if not bars:
        log.warning("no head agreement counts; %s not written", path)
        return None
    fig = _figure((max(4.0, 1.3 * len(bars) + 2.5), 4.2))
    ax = fig.subplots()
    bottom = [0.0] * len(bars)
    for k, (_, name, colour) in enumerate(_AGREEMENT):
        heights = [pcts[k] for _, pcts in bars]
        drawn = ax.bar([label for label, _ in bars], heights, bottom=bottom, color=colour, label=name, width=0.6)
        for rect, h, b in zip(drawn, heights, bottom):
            if h >= 4:
                ax.text(rect.get_x() + rect.get_width() / 2, b + h / 2, f"{h:.1f}",
                        ha="center", va="center", fontsize=8, color="white")
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_ylabel("% of test images")
    ax.set_ylim(0, 100)
    ax.set_title("agreement of the two heads")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_conflict(run_dirs: Mapping[str, Path], path: Path | str) -> Path | None:
    """Gradient conflict between the CE and KD losses vs step: cosine on the shared parameters,
    cosine on the features, and the prediction term; one line per labelled run, 0 marked.
    Runs without conflict records in ``metrics.jsonl`` are skipped; returns None when none has them."""
    curves = {label: conflict_records(Path(d)) for label, d in run_dirs.items()}
    curves = {label: records for label, records in curves.items() if records}
    if not curves:
        log.warning("no gradient-conflict records in %s; %s not written", ", ".join(map(str, run_dirs.values())), path)
        return None
    fig = _figure((5 * len(_CONFLICT), 3.8))
    axes = fig.subplots(1, len(_CONFLICT), sharex=True)
    for ax, (key, title) in zip(axes, _CONFLICT):
        for label, records in curves.items():
            points = [(step, c[key]) for step, c in records if c.get(key) is not None]
            if points:
                ax.plot(*zip(*points), label=label, linewidth=1.2)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


# ---- the report -----------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"


def _run(rows: list[dict], **match: Any) -> dict | None:
    """The first row with a run directory matching every ``key=value``."""
    return next((r for r in rows if r["run_dir"] and all(r[k] == v for k, v in match.items())), None)


def _dho_rows(rows: list[dict]) -> list[dict]:
    """Per teacher, the dho run of the largest shot count and first seed (among those still on disk)."""
    out = []
    for teacher in teacher_labels(rows):
        dho = [r for r in rows if r["teacher"] == teacher and r["method"] == "dho" and r["run_dir"] and r["run_dir"].is_dir()]
        if dho:
            shots = max(r["shots"] for r in dho)
            seed = min(r["seed"] for r in dho if r["shots"] == shots)
            row = _run(dho, shots=shots, seed=seed)
            assert row is not None  # shots and seed are those of one of the dho rows
            out.append(row)
    return out


def _conflict_sets(rows: list[dict]) -> list[tuple[str, int | float, int, dict[str, Path]]]:
    """(teacher, shots, seed, {method: run dir}) of dho vs ce_kd_logit (and pcgrad) at each shot
    count, for the first seed whose runs have conflict records."""
    out = []
    for teacher in teacher_labels(rows):
        mine = [r for r in rows if r["teacher"] == teacher]
        for shots in sorted({r["shots"] for r in mine if r["method"] == "dho"}):
            for seed in sorted({r["seed"] for r in mine if r["shots"] == shots}):
                found = {m: _run(mine, method=m, shots=shots, seed=seed) for m in ("dho", "ce_kd_logit", "pcgrad")}
                runs = {m: r["run_dir"] for m, r in found.items() if r}
                if any(conflict_records(d) for d in runs.values()):
                    out.append((teacher, shots, seed, runs))
                    break
            else:
                log.warning("teacher %s, %s: no run has conflict records; conflict plot skipped",
                            teacher, shots_label(shots))
    return out


def _report_markdown(sources: list[Path], rows: list[dict], table: str,
                     sections: list[tuple[str, list[tuple[str, Path]]]], out_dir: Path) -> str:
    """report.md: a one-line overview, the accuracy tables, then one section of images per plot kind."""
    def link(p: Path) -> str:
        return Path(os.path.relpath(p, out_dir)).as_posix()

    seeds = sorted({r["seed"] for r in rows})
    shots = sorted({r["shots"] for r in rows})
    lines = [f"# Sweep report: {' + '.join(d.name for d in sources)}", "",
             f"{sum(1 for r in rows if r['method'] != 'teacher')} student runs; teachers: {', '.join(teacher_labels(rows))}; "
             f"shots: {', '.join(shots_label(s) for s in shots)}; seeds: {', '.join(map(str, seeds))}.", "",
             "## Test accuracy (%)", "",
             "Mean ± population std over seeds; the best student per column in bold. "
             f"Long format: [table.csv]({link(out_dir / 'table.csv')}).", "", table]
    conflicts = conflict_table(rows)
    if conflicts:
        lines += ["", "## Gradient cosine cos(g_CE, g_KD) on the backbone, second half of training", "",
                  "Mean of the logged cosines over the later half of each run (negative = conflicting).", "", conflicts, ""]
    for title, images in sections:
        if images:
            lines += [f"## {title}", ""]
            lines += [f"![{caption}]({link(p)})\n" for caption, p in images]
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: Path | str | Sequence[Path | str], out_dir: Path | str | None = None) -> dict[str, Path]:
    """Tables, plots and ``report.md`` for a sweep, written to ``out_dir`` (default
    ``<sweep_dir>/report``). Heat map and agreement use the dho runs of the largest shot count and
    first seed; conflict curves compare dho, ce_kd_logit and pcgrad at each shot count. Plots whose
    inputs are missing are skipped with a warning. Several sweep directories are one table
    (:func:`merge_results`), whose ``results.csv`` is written to ``out_dir`` too. Returns
    ``{file name: path}`` of what was written."""
    sources = [Path(sweep_dir)] if isinstance(sweep_dir, (str, Path)) else [Path(d) for d in sweep_dir]
    if not sources:
        raise ValueError("dho report needs at least one sweep directory")
    out_dir = Path(out_dir) if out_dir is not None else sources[0] / "report"
    rows = merge_results(sources)
    if len(sources) > 1:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(out_dir / "results.csv", RESULT_COLUMNS, ({
            **{k: "" if r.get(k) is None else r[k] for k in RESULT_COLUMNS},
            "run_dir": os.path.relpath(r["run_dir"], out_dir) if r["run_dir"] else ""} for r in rows))
    written = write_tables(rows, out_dir)
    plots: dict[str, list[tuple[str, Path | None]]] = {"Accuracy vs shots": [], "Mixing grid (validation accuracy)": [],
                                                       "Head agreement (test)": [], "Gradient conflict": []}
    plots["Accuracy vs shots"].append(("accuracy vs shots", plot_accuracy_vs_shots(rows, out_dir / "accuracy_vs_shots.png")))
    dho = _dho_rows(rows)
    for r in dho:
        name = f"mixing_{_slug(r['teacher'])}_{_slug(shots_label(r['shots']))}_seed{r['seed']}.png"
        caption = f"mixing grid, teacher {r['teacher']}, {shots_label(r['shots'])}, seed {r['seed']}"
        plots["Mixing grid (validation accuracy)"].append((caption, plot_mixing_heatmap(r["run_dir"], out_dir / name)))
    if dho:
        plots["Head agreement (test)"].append(("head agreement", plot_agreement(dho, out_dir / "agreement.png")))
    else:
        log.warning("no dho runs; mixing heat map and agreement skipped")
    for teacher, shots, seed, runs in _conflict_sets(rows):
        name = f"conflict_{_slug(teacher)}_{_slug(shots_label(shots))}_seed{seed}.png"
        caption = f"gradient conflict, teacher {teacher}, {shots_label(shots)}, seed {seed}"
        plots["Gradient conflict"].append((caption, plot_conflict(runs, out_dir / name)))
    sections = [(title, [(c, p) for c, p in images if p is not None]) for title, images in plots.items()]
    written.update({p.name: p for _, images in sections for _, p in images})
    report = out_dir / "report.md"
    write_text_atomic(report, _report_markdown(sources, rows, written["table.md"].read_text(), sections, out_dir))
    written["report.md"] = report
    log.info("wrote %s (%d files)", report, len(written))
    return written
