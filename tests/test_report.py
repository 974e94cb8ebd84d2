"""Sweep report: typed loading, mean/std over seeds, the paper's tables, plots and report.md on a
fake sweep written in the formats the sweep produces."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest

from dho.experiments.report import (
    conflict_table,
    load_results,
    plot_accuracy_vs_shots,
    plot_agreement,
    plot_conflict,
    plot_mixing_heatmap,
    summary_table,
    write_report,
    write_tables,
)

COLUMNS = ["teacher", "shots", "seed", "method", "run_dir", "test", "test_ce_head", "test_kd_head", "alpha", "beta",
           "wall_time_s"]
ALPHAS = [round(0.05 * i, 2) for i in range(21)]
BETAS = [0.5, 0.75, 1, 1.25, 1.5, 2, 4]
PNG = b"\x89PNG\r\n\x1a\n"


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _write_run(run_dir: Path, method: str, acc: float, *, dual: bool, grid: bool = True, conflict: bool = True) -> None:
    """results.json, metrics.jsonl (training, val and conflict records) and, for dual-head runs
    with ``grid``, mixing_grid.csv peaking at alpha=0.4, beta=2."""
    run_dir.mkdir(parents=True)
    test = {"n": 200, "ce_head": acc - 0.02, "kd_head": acc - 0.01, "mixed": acc,
            "agreement": {"both_right": 100, "only_ce": 20, "only_kd": 30, "both_wrong": 50}}
    (run_dir / "results.json").write_text(json.dumps({"method": method, "test": test, "alpha": 0.4, "beta": 2.0}))
    records = []
    for step in range(1, 41):
        records.append({"step": step, "epoch": step / 20, "lr": 1e-3, "loss": 1.2, "ce_loss": 0.9, "kd_loss": 0.4})
        if conflict and step % 10 == 0:
            conflict_terms = {"cos_params": 0.3 - step / 100, "cos_features": 0.2, "pred_term": 0.05}
            records.append({"step": step, "conflict": conflict_terms})
    records.append({"step": 40, "val": {"mixed": acc}})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if dual and grid:
        points = [{"alpha": a, "beta": b, "accuracy": 0.6 - abs(a - 0.4) / 4 - abs(b - 2) / 40} for a in ALPHAS for b in BETAS]
        _write_csv(run_dir / "mixing_grid.csv", points, ["alpha", "beta", "accuracy"])


def _fake_sweep(root: Path, *, grid: bool = True) -> Path:
    """2 shots x 2 seeds x {teacher, ce_kd_logit, dho}; dho beats ce_kd_logit by 3 points."""
    rows = []
    for shots in (4, 16):
        for seed in (0, 1):
            rows.append({"teacher": "zero-shot", "shots": shots, "seed": seed, "method": "teacher", "run_dir": "",
                         "test": 0.55, "test_ce_head": "", "test_kd_head": "", "alpha": "", "beta": "", "wall_time_s": 0})
            for method, acc in (("ce_kd_logit", 0.40), ("dho", 0.43)):
                acc += shots / 100 + seed / 100
                rel = f"zero-shot/{shots}shot/seed{seed}/{method}"
                dual = method == "dho"
                _write_run(root / rel, method, acc, dual=dual, grid=grid)
                rows.append({"teacher": "zero-shot", "shots": shots, "seed": seed, "method": method, "run_dir": rel,
                             "test": acc, "test_ce_head": acc - 0.02, "test_kd_head": acc - 0.01 if dual else "",
                             "alpha": 0.4 if dual else "", "beta": 2.0 if dual else "", "wall_time_s": 12.5})
    _write_csv(root / "results.csv", rows, COLUMNS)
    return root


def _row(method: str, shots, seed: int, test: float, teacher: str = "zero-shot") -> dict:
    return {"teacher": teacher, "method": method, "shots": shots, "seed": seed, "test": test, "run_dir": None}


def _is_png(path: Path | None) -> bool:
    return path is not None and path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_load_results_types_values(tmp_path):
    sweep = _fake_sweep(tmp_path)
    rows = load_results(sweep)
    assert len(rows) == 12
    teacher = next(r for r in rows if r["method"] == "teacher")
    assert teacher["run_dir"] is None and teacher["test_kd_head"] is None and teacher["alpha"] is None
    dho = next(r for r in rows if r["method"] == "dho" and r["shots"] == 16 and r["seed"] == 1)
    assert dho["shots"] == 16 and isinstance(dho["shots"], int) and isinstance(dho["seed"], int)
    assert dho["test"] == pytest.approx(0.60) and dho["alpha"] == pytest.approx(0.4) and dho["wall_time_s"] == 12.5
    assert dho["run_dir"] == sweep / "zero-shot/16shot/seed1/dho" and (dho["run_dir"] / "results.json").is_file()


def test_load_results_low_shot_fraction(tmp_path):
    row = dict.fromkeys(COLUMNS, "") | {"teacher": "t", "shots": "0.01", "seed": "2", "method": "ce", "test": "0.25"}
    _write_csv(tmp_path / "results.csv", [row], COLUMNS)
    (loaded,) = load_results(tmp_path)
    assert loaded["shots"] == pytest.approx(0.01) and isinstance(loaded["shots"], float)
    assert loaded["seed"] == 2 and loaded["test"] == 0.25 and loaded["beta"] is None


def test_summary_mean_population_std_and_order():
    rows = [_row("dho", 16, 0, 0.40), _row("dho", 16, 1, 0.44), _row("ce", 16, 0, 0.30),
            _row("dho", 2, 0, 0.20), _row("teacher", 16, 0, 0.5), _row("zzz", 16, 0, 0.1), _row("ce", 2, 0, None)]
    table = summary_table(rows)
    assert [(e["method"], e["shots"]) for e in table] == [("teacher", 16), ("ce", 16), ("dho", 2), ("dho", 16), ("zzz", 16)]
    dho16 = table[3]
    assert dho16["mean"] == pytest.approx(42.0) and dho16["std"] == pytest.approx(2.0) and dho16["n"] == 2
    assert table[1]["std"] == 0.0 and table[1]["n"] == 1


def test_markdown_bolds_best_student_never_teacher(tmp_path):
    rows = [_row("teacher", 4, 0, 0.70), _row("teacher", 4, 1, 0.70),
            _row("ce", 4, 0, 0.40), _row("ce", 4, 1, 0.42),
            _row("dho", 4, 0, 0.44), _row("dho", 4, 1, 0.46),
            _row("dho", 16, 0, 0.50), _row("ce", 16, 0, 0.52), _row("teacher", 16, 0, 0.90)]
    paths = write_tables(rows, tmp_path)
    lines = paths["table.md"].read_text().splitlines()
    assert lines[0] == "### Teacher: zero-shot"
    assert "| Method | 4-shot | 16-shot |" in lines
    body = [line for line in lines if line.startswith("| ") and "Method" not in line]
    assert [line.split("|")[1].strip() for line in body] == ["Teacher", "CE", "DHO"]
    assert body[0] == "| Teacher | 70.0 ± 0.0 | 90.0 |"
    assert body[1] == "| CE | 41.0 ± 1.0 | **52.0** |"
    assert body[2] == "| DHO | **45.0 ± 1.0** | 50.0 |"


def test_table_csv_round_trip(tmp_path):
    rows = [_row("dho", 16, 0, 0.401), _row("dho", 16, 1, 0.4432), _row("ce", 0.01, 0, 0.3, teacher="tip-adapter-f")]
    path = write_tables(rows, tmp_path)["table.csv"]
    with path.open(newline="") as fh:
        back = list(csv.DictReader(fh))
    expected = summary_table(rows)
    assert [(r["teacher"], r["method"], r["shots"], int(r["n"])) for r in back] == \
        [(e["teacher"], e["method"], str(e["shots"]), e["n"]) for e in expected]
    for r, e in zip(back, expected):
        assert float(r["mean"]) == pytest.approx(e["mean"], abs=1e-4)
        assert float(r["std"]) == pytest.approx(e["std"], abs=1e-4)


def test_plot_functions_write_png(tmp_path):
    sweep = _fake_sweep(tmp_path / "sweep")
    rows = load_results(sweep)
    dho = [r for r in rows if r["method"] == "dho"]
    out = tmp_path / "plots"
    assert _is_png(plot_accuracy_vs_shots(rows, out / "acc.png"))
    assert _is_png(plot_mixing_heatmap(dho[0]["run_dir"], out / "mix.png"))
    assert _is_png(plot_agreement(dho, out / "agree.png"))
    assert _is_png(plot_agreement({"dho a": dho[0]["run_dir"]}, out / "agree_dirs.png"))
    runs = {r["method"]: r["run_dir"] for r in rows if r["shots"] == 4 and r["seed"] == 0 and r["run_dir"]}
    assert _is_png(plot_conflict(runs, out / "conflict.png"))


def test_plot_accuracy_low_shot_fractions(tmp_path):
    rows = [_row("ce", 0.01, 0, 0.3), _row("ce", 0.1, 0, 0.5), _row("dho", 0.01, 0, 0.35), _row("dho", 0.1, 0, 0.56)]
    assert _is_png(plot_accuracy_vs_shots(rows, tmp_path / "acc.png"))


def test_plots_skip_missing_inputs(tmp_path, caplog):
    run = tmp_path / "run"
    _write_run(run, "dho", 0.5, dual=True, grid=False, conflict=False)
    with caplog.at_level(logging.WARNING, logger="dho.experiments.report"):
        assert plot_mixing_heatmap(run, tmp_path / "mix.png") is None
        assert plot_conflict({"dho": run}, tmp_path / "conflict.png") is None
        assert plot_agreement([tmp_path / "absent"], tmp_path / "agree.png") is None
    assert not list(tmp_path.glob("*.png"))
    assert "mixing_grid.csv missing" in caplog.text


def test_write_report_writes_and_links_everything(tmp_path):
    sweep = _fake_sweep(tmp_path / "sweep")
    paths = write_report(sweep)
    out = sweep / "report"
    assert set(paths) == {"table.md", "table.csv", "accuracy_vs_shots.png", "mixing_zero-shot_16-shot_seed0.png",
                          "agreement.png", "conflict_zero-shot_4-shot_seed0.png", "conflict_zero-shot_16-shot_seed0.png",
                          "report.md"}
    assert all(p.is_file() and p.stat().st_size > 0 and p.parent == out for p in paths.values())
    report = paths["report.md"].read_text()
    for name in paths:
        if name.endswith(".png"):
            assert f"]({name})" in report and _is_png(out / name)
    assert "(table.csv)" in report
    assert "| DHO | **47.5 ± 0.5** | **59.5 ± 0.5** |" in report  # 0.47/0.48 and 0.59/0.60
    assert "| Teacher | 55.0 ± 0.0 | 55.0 ± 0.0 |" in report


def test_write_report_without_mixing_grid(tmp_path, caplog):
    sweep = _fake_sweep(tmp_path / "sweep", grid=False)
    with caplog.at_level(logging.WARNING, logger="dho.experiments.report"):
        paths = write_report(sweep, tmp_path / "out")
    assert not any(name.startswith("mixing") for name in paths)
    assert {"table.md", "table.csv", "accuracy_vs_shots.png", "agreement.png", "report.md"} <= set(paths)
    assert "mixing_grid.csv missing" in caplog.text
    assert "](mixing_" not in paths["report.md"].read_text() and not list((tmp_path / "out").glob("mixing*"))


def test_dho_head_rows_are_reported_but_never_ranked(tmp_path):
    rows = [_row("ce_kd_logit", 4, 0, 0.40), {**_row("dho", 4, 0, 0.42), "test_ce_head": 0.39, "test_kd_head": 0.45}]
    summary = {(e["method"], e["shots"]): e["mean"] for e in summary_table(rows)}
    assert summary[("dho_ce_head", 4)] == pytest.approx(39.0) and summary[("dho_kd_head", 4)] == pytest.approx(45.0)
    table = write_tables(rows, tmp_path)["table.md"].read_text()
    assert "| DHO | **42.0** |" in table and "| DHO (h_KD alone) | 45.0 |" in table


def test_conflict_table_averages_the_second_half(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "conflict": {"cos_params": c, "cos_features": 0.0, "pred_term": 0.0}}
             for s, c in ((1, 0.9), (2, 0.5), (3, -0.4), (4, -0.6))]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    table = conflict_table([{**_row("ce_kd_logit", 4, 0, 0.4), "run_dir": run}])
    assert "| zero-shot | CE+KD (logit) | -0.50 |" in table
    assert conflict_table([_row("dho", 4, 0, 0.4)]) == ""


def test_several_sweeps_are_reported_as_one_table(tmp_path):
    """A grid and a second sweep with an extra method and a redone cell: one table, the later cell
    wins, and the merged results.csv (run dirs relative to it) reports the same again."""
    first = _fake_sweep(tmp_path / "first")
    extra = tmp_path / "extra"
    _write_run(extra / "zero-shot/16shot/seed0/sskd", "sskd", 0.50, dual=False)
    _write_run(extra / "zero-shot/16shot/seed0/dho", "dho", 0.70, dual=True)
    _write_csv(extra / "results.csv", [
        {"teacher": "zero-shot", "shots": 16, "seed": 0, "method": m, "run_dir": f"zero-shot/16shot/seed0/{m}", "test": acc,
         "test_ce_head": acc, "test_kd_head": "", "alpha": "", "beta": "", "wall_time_s": 1} for m, acc in (("sskd", 0.5), ("dho", 0.7))],
        COLUMNS)
    shutil.rmtree(first / "zero-shot/4shot/seed0/dho")  # a run directory no longer on disk: its plots are skipped
    paths = write_report([first, extra], tmp_path / "out")
    report = paths["report.md"].read_text()
    assert "# Sweep report: first + extra" in report and "| SSKD |" in report
    assert "| DHO | **47.5 ± 0.5** | **65.0 ± 5.0** |" in report and "| SSKD | – | 50.0 |" in report  # 0.70 (later) and 0.60
    merged = load_results(tmp_path / "out")
    assert len(merged) == 13
    assert [r["run_dir"].resolve() for r in merged if r["method"] == "sskd"] == [extra / "zero-shot/16shot/seed0/sskd"]
    again = write_report(tmp_path / "out", tmp_path / "again")
    assert again["table.md"].read_text() == paths["table.md"].read_text()
