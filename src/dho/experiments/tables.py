"""Reading a sweep's results and the paper's tables: mean and spread over seeds per method and
shot count (markdown and CSV), and the gradient-cosine summary.

A sweep directory holds ``results.csv`` (one row per finished run, plus ``method == "teacher"``
rows for the teacher's own test accuracy) and one run directory per student run with
``results.json``, ``metrics.jsonl`` and, for dual-head runs, ``mixing_grid.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..files import write_csv_atomic, write_text_atomic

__all__ = [
    "HEAD_ROWS", "LABELS", "METHOD_ORDER", "RESULT_COLUMNS", "conflict_records", "conflict_table", "load_results",
    "merge_results", "method_key",
    "read_json", "shots_label", "summary_table", "teacher_labels",
    "write_tables",
]

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("teacher", "shots", "seed", "method", "run_dir", "test", "test_ce_head", "test_kd_head",
                  "alpha", "beta", "wall_time_s")  # a sweep's results.csv

METHOD_ORDER = ("teacher", "ce", "kd_logit", "kd_feature", "ce_kd_logit", "ce_kd_feature", "sskd", "dhkd", "pcgrad", "dho",
                "dho_ce_head", "dho_kd_head")
HEAD_ROWS = {"dho_ce_head": "test_ce_head", "dho_kd_head": "test_kd_head"}  # DHO's heads alone (ablation rows)
LABELS = {
    "teacher": "Teacher", "ce": "CE", "kd_logit": "KD (logit)", "kd_feature": "KD (feature)",
    "ce_kd_logit": "CE+KD (logit)", "ce_kd_feature": "CE+KD (feature)", "sskd": "SSKD", "dhkd": "DHKD",
    "pcgrad": "PCGrad", "dho": "DHO", "dho_ce_head": "DHO (h_CE alone)", "dho_kd_head": "DHO (h_KD alone)",
}
_FLOAT_COLUMNS = ("test", "test_ce_head", "test_kd_head", "alpha", "beta", "wall_time_s")


# ---- reading --------------------------------------------------------------------------------
def _number(text: str) -> int | float:
    """Shots as written: ``"16"`` -> 16, ``"16.0"`` -> 16, ``"0.01"`` -> 0.01 (a labeled fraction)."""
    value = float(text)
    return int(value) if value.is_integer() and value >= 1 else value


def _optional_float(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def merge_results(sweep_dirs: Sequence[Path | str]) -> list[dict]:
    """The rows of several sweeps (e.g. a grid and its extra cells, run apart) as one table: a
    (teacher, shots, seed, method) found twice is taken from the later directory, with a note."""
    merged: dict[tuple, dict] = {}
    for sweep_dir in sweep_dirs:
        for row in load_results(sweep_dir):
            key = (row["teacher"], row["shots"], row["seed"], row["method"])
            if key in merged and row["method"] != "teacher":
                log.info("%s %s seed %s %s: taken from %s", *key[:3], key[3], sweep_dir)
            merged[key] = row
    return list(merged.values())


def load_results(sweep_dir: Path | str) -> list[dict]:
    """Rows of ``<sweep_dir>/results.csv`` with typed values.

    ``shots`` is an int (K shots per class) or a float (labeled fraction); ``seed`` an int;
    ``test``, ``test_ce_head``, ``test_kd_head``, ``alpha``, ``beta``, ``wall_time_s`` floats or
    None when empty; ``run_dir`` the run directory joined to ``sweep_dir`` (None for teacher rows).
    Other columns are kept as strings.
    """
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "results.csv").is_file():
        what = "a training run" if (sweep_dir / "config.yaml").is_file() else "not a sweep directory"
        raise FileNotFoundError(f"{str(sweep_dir)!r} is {what} (no results.csv): `dho report` reads the directory "
                                "`dho sweep` writes; a run's own numbers are in its results.json (`dho eval RUN`)")
    with (sweep_dir / "results.csv").open(newline="") as fh:
        raw = list(csv.DictReader(fh))
    rows = []
    for r in raw:
        row = dict(r)
        row["shots"] = _number(r["shots"])
        row["seed"] = int(r["seed"])
        row["run_dir"] = sweep_dir / r["run_dir"] if r.get("run_dir") else None
        for key in _FLOAT_COLUMNS:
            row[key] = _optional_float(r.get(key))
        rows.append(row)
    log.info("loaded %d rows from %s", len(rows), sweep_dir / "results.csv")
    return rows


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def conflict_records(run_dir: Path) -> list[tuple[int, dict]]:
    """(step, conflict dict) for every ``metrics.jsonl`` record that has a ``conflict`` entry."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a run still writing leaves a partial last line
            log.warning("%s:%d is not JSON; skipped", path, number)
            continue
        if isinstance(record.get("conflict"), dict) and "step" in record:
            out.append((record["step"], record["conflict"]))
    return out


# ---- tables ---------------------------------------------------------------------------------
def method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def teacher_labels(rows: Iterable[dict]) -> list[str]:
    return list(dict.fromkeys(r["teacher"] for r in rows))


def shots_label(shots: int | float) -> str:
    """``16`` -> "16-shot", ``0.01`` -> "1%" (a labeled fraction)."""
    if isinstance(shots, float) and shots < 1:
        return f"{100 * shots:g}%"
    return f"{shots:g}-shot"


def summary_table(rows: list[dict]) -> list[dict]:
    """Per (teacher, method, shots): ``mean`` and population ``std`` of the test accuracy over seeds,
    in percent, and ``n`` seeds. Ordered by teacher (first seen), canonical method order, shots
    ascending; groups without any test accuracy are left out."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r["test"] is not None:
            groups.setdefault((r["teacher"], r["method"], r["shots"]), []).append(100 * r["test"])
        if r["method"] == "dho":
            for name, column in HEAD_ROWS.items():
                if r.get(column) is not None:
                    groups.setdefault((r["teacher"], name, r["shots"]), []).append(100 * r[column])
    order = {t: i for i, t in enumerate(teacher_labels(rows))}
    out = []
    for (teacher, method, shots), values in sorted(groups.items(), key=lambda kv: _group_key(kv[0], order)):
        out.append({"teacher": teacher, "method": method, "shots": shots, "mean": statistics.fmean(values),
                    "std": statistics.pstdev(values), "n": len(values)})
    return out


def _group_key(group: tuple, order: dict[str, int]) -> tuple:
    teacher, method, shots = group
    return order[teacher], method_key(method), shots


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "–"
    return f"{entry['mean']:.1f}" if entry["n"] == 1 else f"{entry['mean']:.1f} ± {entry['std']:.1f}"


def _ranked(method: str) -> bool:
    return method != "teacher" and method not in HEAD_ROWS


def _markdown_table(summary: list[dict], teacher: str) -> str:
    """One markdown table: rows = methods, columns = shots; best method per column in bold
    (ties at the shown precision are all bold; the teacher and DHO's single-head rows never are)."""
    entries = {(e["method"], e["shots"]): e for e in summary if e["teacher"] == teacher}
    methods = sorted({m for m, _ in entries}, key=method_key)
    shots = sorted({s for _, s in entries})
    best = {}
    for s in shots:
        students = [round(e["mean"], 1) for (m, k), e in entries.items() if k == s and _ranked(m)]
        best[s] = max(students, default=None)
    lines = ["| Method | " + " | ".join(shots_label(s) for s in shots) + " |",
             "|---|" + "---:|" * len(shots)]
    for m in methods:
        cells = []
        for s in shots:
            e = entries.get((m, s))
            text = _cell(e)
            cells.append(f"**{text}**" if e and _ranked(m) and round(e["mean"], 1) == best[s] else text)
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(rows: list[dict], out_dir: Path | str) -> dict[str, Path]:
    """Write ``table.md`` (one table per teacher, the paper's layout: test accuracy in percent,
    mean ± std over seeds) and ``table.csv`` (long format: teacher, method, shots, mean, std, n).
    Returns ``{"table.md": path, "table.csv": path}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary_table(rows)
    blocks = [f"### Teacher: {t}\n\n{_markdown_table(summary, t)}\n" for t in teacher_labels(summary)]
    md = out_dir / "table.md"
    write_text_atomic(md, "\n".join(blocks))
    path = out_dir / "table.csv"
    write_csv_atomic(path, ["teacher", "method", "shots", "mean", "std", "n"],
                     ({**e, "mean": round(e["mean"], 4), "std": round(e["std"], 4)} for e in summary))
    log.info("wrote %s and %s", md, path)
    return {"table.md": md, "table.csv": path}


def conflict_table(rows: list[dict]) -> str:
    """Markdown: per teacher, method and shot count, the mean over seeds of each run's average
    gradient cosine (backbone parameters) over the second half of its conflict records."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        records = conflict_records(r["run_dir"]) if r.get("run_dir") else []
        late = [c["cos_params"] for _, c in records[len(records) // 2:] if c.get("cos_params") is not None]
        if late:
            groups.setdefault((r["teacher"], r["method"], r["shots"]), []).append(statistics.fmean(late))
    if not groups:
        return ""
    shots = sorted({k[2] for k in groups})
    keys = sorted({k[:2] for k in groups}, key=lambda k: (teacher_labels(rows).index(k[0]), method_key(k[1])))
    lines = ["| Teacher | Method | " + " | ".join(shots_label(s) for s in shots) + " |", "|---|---|" + "---:|" * len(shots)]
    for teacher, method in keys:
        cells = [f"{statistics.fmean(groups[(teacher, method, s)]):+.2f}" if (teacher, method, s) in groups else "–" for s in shots]
        lines.append(f"| {teacher} | {LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
