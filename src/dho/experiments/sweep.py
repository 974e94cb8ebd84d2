"""Methods x shots x seeds (x teachers) from one config: resumable, one table at the end.

A sweep file holds the grid under ``sweep:`` and a run config under ``run:``::

    sweep:
      methods: [ce, ce_kd_logit, dho]
      shots: [1, 4, 16]
      seeds: [0]
      teachers: {zero-shot: {teacher.adapter: none}, few-shot: {teacher.adapter: tip-f}}  # label -> run overrides
      teacher_methods: {few-shot: [dho]}  # optional: restrict a teacher to some methods
    run: {...}  # any RunConfig, as in configs/*.yaml

Run r lands in ``<out>/<teacher>/<shots>shot/seed<seed>/<method>``; a run whose results.json
exists is skipped, and one cut short goes on from its saved state (``state/``), so an interrupted
sweep resumes where it stopped, to the same results. The base teacher's outputs
for every view the runs draw (and for the validation and test centre crops) are computed once,
sharded over worker processes of one thread each, and kept in ``<out>/teacher_cache/``; few-shot
teachers are fitted on them. ``<out>/results.csv`` gathers every run and the teachers' accuracy.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Sequence
from concurrent.futures import Future, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from ..coerce import read_yaml
from ..config import ConfigError, RunConfig
from ..data.datasets import eval_key
from ..data.manifest import SplitManifest
from ..device import free_cores
from ..evaluate import SplitLogits, score
from ..files import write_csv_atomic, write_text_atomic
from ..loop import RunResults, train
from ..methods import METHODS
from ..progress import progress as progress_bar
from ..teachers import Teacher, build_teacher, resolve_teacher
from ..teachers.cache import TeacherCache
from ..teachers.fewshot import FewShotTeacher, fit_fewshot_teacher
from ..teachers.tip_adapter import TipAdapter
from ..training.plan import training_view_size
from ..training.pool import executor
from ..training.precompute import base_teacher_config, cached_splits, fill_teacher_cache, store_path
from ..training.state import config_changes, load_state
from ..training.stopping import TrainingInterrupted
from .tables import RESULT_COLUMNS

__all__ = ["RESULT_COLUMNS", "SweepConfig", "load_sweep", "run_sweep"]

log = logging.getLogger(__name__)

GridKey = tuple[str, int | float, int, str]  # (teacher label, shots or labeled fraction, seed, method)


@dataclass(frozen=True)
class SweepConfig:
    """The grid. ``teachers`` maps a label to run-config overrides (``{}`` = the run's teacher)."""

    methods: tuple[str, ...] = ("ce", "ce_kd_logit", "dho")
    shots: tuple[int | float, ...] = (1, 4, 16)  # K shots per class, or labeled fractions (floats below 1)
    seeds: tuple[int, ...] = (0,)
    teachers: dict[str, dict[str, Any]] = field(default_factory=lambda: {"zero-shot": {"teacher.adapter": "none"}})
    teacher_methods: dict[str, tuple[str, ...]] = field(default_factory=dict)
    workers: int | None = None

    def __post_init__(self) -> None:
        for m in (*self.methods, *(m for ms in self.teacher_methods.values() for m in ms)):
            if m not in METHODS:
                raise ConfigError(f"sweep method {m!r} is unknown; known: {', '.join(METHODS)}")
        if not isinstance(self.teachers, dict) or not all(isinstance(v, dict) for v in self.teachers.values()):
            raise ConfigError("sweep.teachers maps a label to run-config overrides, e.g. "
                              "{zero-shot: {teacher.adapter: none}, few-shot: {teacher.adapter: tip-f}}")
        unknown = set(self.teacher_methods) - set(self.teachers)
        if unknown:
            raise ConfigError(f"sweep.teacher_methods names teachers {sorted(unknown)} missing from sweep.teachers")

    def runs(self, base: RunConfig, out: Path) -> dict[GridKey, RunConfig]:
        """(teacher label, shots, seed, method) -> the run's config."""
        cfgs = {}
        for label, overrides in self.teachers.items():
            for shots in self.shots:
                for seed in self.seeds:
                    for method in self.teacher_methods.get(label, self.methods):
                        cfgs[(label, shots, seed, method)] = base.override({
                            **overrides, **_labels(shots), "data.split_seed": seed, "seed": seed,
                            "loss.method": method, "eval.teacher": False,
                            "out": str(out / label / _labels_dir(shots) / f"seed{seed}" / method)})
        return cfgs


def _labels(shots: int | float) -> dict[str, Any]:
    """A grid's labeled amount: K shots per class (an int), or a labeled fraction (a float below 1,
    drawn by the run's ``data.low_shot`` rule, e.g. SimCLR's 1% / 10% lists with ``file``)."""
    if isinstance(shots, float) and shots < 1:
        return {"data.shots": None, "data.fraction": shots}
    return {"data.shots": int(shots)}


def _labels_dir(shots: int | float) -> str:
    """``16`` -> "16shot", ``0.01`` -> "1pct"."""
    return f"{100 * shots:g}pct" if isinstance(shots, float) and shots < 1 else f"{int(shots)}shot"


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> tuple[SweepConfig, RunConfig]:
    """A sweep file -> (grid, base run config with ``overrides`` applied)."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a sweep file has a 'sweep:' section and a 'run:' section")
    unknown = set(data) - {"sweep", "run"}
    if unknown or "sweep" not in data:
        raise ConfigError(f"{path}: a sweep file has a 'sweep:' section and a 'run:' section (found {sorted(data)})")
    if not isinstance(data["sweep"], dict) or not isinstance(data.get("run") or {}, dict):
        raise ConfigError(f"{path}: 'sweep:' and 'run:' each hold keys (e.g. sweep: {{methods: [ce, dho], shots: [1, 16]}})")
    grid = dict(data["sweep"])
    for key in ("methods", "shots", "seeds"):
        if key in grid:
            grid[key] = tuple(grid[key]) if isinstance(grid[key], list) else (grid[key],)  # `shots: 4` = [4]
    known = {f.name for f in fields(SweepConfig)}
    if set(grid) - known:
        raise ConfigError(f"{path}: unknown sweep key(s) {sorted(set(grid) - known)}; known: {', '.join(sorted(known))}")
    grid["teacher_methods"] = {k: tuple(v) for k, v in (grid.get("teacher_methods") or {}).items()}
    try:
        sweep = SweepConfig(**grid)
    except (TypeError, AttributeError) as err:
        raise ConfigError(f"{path}: {err}") from None
    return sweep, RunConfig.from_dict(data.get("run") or {}).override(list(overrides))


# ---- runs -------------------------------------------------------------------------------------
_WORKER_STATE: dict[str, Any] = {}


def _worker_cache(cfg: RunConfig, cache_path: Path) -> tuple[Teacher, TeacherCache]:
    """The base teacher and its cache, loaded once per worker process."""
    key = f"{cache_path}:{(cache_path / 'meta.json').stat().st_mtime_ns}"
    if _WORKER_STATE.get("key") != key:
        base = base_teacher_config(cfg)
        teacher = build_teacher(base.teacher, cached_splits(base.data).classes, base.data.dataset)
        _WORKER_STATE.update(key=key, teacher=teacher, cache=TeacherCache.load(teacher, cache_path))
    return _WORKER_STATE["teacher"], _WORKER_STATE["cache"]


STOP_MARKER = ".stopped"  # in a sweep's directory while it is being stopped: no queued run starts


def _run_job(cfg: RunConfig, cache_path: Path, adapter_state: dict | None, stop_marker: Path) -> RunResults:
    if stop_marker.exists():  # handed to this worker before the stop, starting after it
        raise TrainingInterrupted(signal.SIGINT, 0, 0, None, Path(cfg.out))
    teacher, cache = _worker_cache(cfg, cache_path)
    if adapter_state is not None:
        teacher = FewShotTeacher(teacher, TipAdapter.from_state(adapter_state))
    resume = _resumable(cfg)  # else a fresh start: _finished() has already refused a finished run with other settings
    result = train(cfg, teacher=teacher, teacher_cache=cache, resume=resume, overwrite=not resume)
    return result.results


def _resumable(cfg: RunConfig) -> bool:
    """Whether ``cfg.out`` holds the saved state of this very run, cut short: it goes on from
    there. A state from other settings is set aside (the run starts over), with a warning."""
    try:
        state = load_state(Path(cfg.out) / "state")
        if state is not None:
            state.check_config(cfg.to_dict())
    except (ValueError, OSError) as err:
        log.warning("%s: not resuming its saved state (%s); training it from the start", cfg.out, err)
        return False
    return state is not None


def _finished(cfg: RunConfig) -> bool:
    """Whether ``cfg.out`` holds this very run, finished. A run finished with other settings is an
    error (its results would be passed off as this sweep's), not something to overwrite."""
    run_dir = Path(cfg.out)
    if not (run_dir / "results.json").is_file():
        return False
    saved_path = run_dir / "config.yaml"
    if saved_path.is_file():
        saved = yaml.safe_load(saved_path.read_text()) or {}
        changes = config_changes(saved, cfg.to_dict(), saved_keys_only=True)
        if changes:
            raise ConfigError(f"{run_dir} finished with other settings ({'; '.join(changes[:2])}); "
                              "give the sweep another output directory, or delete that run")
    return True


def _teacher_accuracy(teacher: Teacher, cache: TeacherCache, manifest: SplitManifest) -> float:
    keys = [eval_key(teacher.image_size, path) for path, _ in manifest.test]
    if not all(k in cache for k in keys):
        raise RuntimeError("the teacher cache lacks test outputs")
    out = cache.outputs(torch.empty(0), keys)
    if isinstance(teacher, FewShotTeacher):
        out = teacher.adapt(out)
    labels = torch.tensor([y for _, y in manifest.test])
    return score(SplitLogits(labels, teacher=out.logits))["teacher"]


def _fit_teachers(cfgs: dict[GridKey, RunConfig], cache: TeacherCache
                  ) -> tuple[dict[GridKey, dict | None], list[dict]]:
    """Each few-shot teacher the runs use, fitted on the cached outputs (one per label, shots, seed
    and adapter: with teacher.adapter=auto a CE run has none), as its state; and each label's
    teacher row (its few-shot teacher where it has one), scored on the test split."""
    adapters: dict[GridKey, dict | None] = {}
    rows: dict[tuple[str, int | float, int], dict] = {}
    for (label, shots, seed, _), cfg in sorted(cfgs.items(), key=lambda kv: kv[1].adapter == "none"):
        if (label, shots, seed, cfg.adapter) in adapters:
            continue
        manifest = cached_splits(cfg.data)
        teacher: Teacher = cache.teacher
        if cfg.adapter != "none":
            teacher = fit_fewshot_teacher(cfg, cache.teacher, manifest, training_view_size(cfg, teacher.image_size), cache)
        adapters[(label, shots, seed, cfg.adapter)] = teacher.adapter.state() if isinstance(teacher, FewShotTeacher) else None
        if (label, shots, seed) not in rows:
            rows[(label, shots, seed)] = _row(label, shots, seed, "teacher", "",
                                              {"test": {"teacher": _teacher_accuracy(teacher, cache, manifest)}})
    return adapters, list(rows.values())


def _row(label: str, shots: int | float, seed: int, method: str, run_dir: str, results: dict) -> dict:
    test = results.get("test", {})
    return {"teacher": label, "shots": shots, "seed": seed, "method": method, "run_dir": run_dir,
            "test": test.get("mixed", test.get("teacher")), "test_ce_head": test.get("ce_head"),
            "test_kd_head": test.get("kd_head"), "alpha": results.get("alpha"), "beta": results.get("beta"),
            "wall_time_s": results.get("wall_time_s")}


def _write_rows(path: Path, rows: list[dict]) -> None:
    write_csv_atomic(path, RESULT_COLUMNS, ({k: ("" if v is None else v) for k, v in row.items()} for row in rows))


def _gather(cfgs: dict[tuple, RunConfig], teacher_rows: list[dict], out: Path) -> None:
    """Write ``results.csv`` from the teachers' rows and every finished run's results.json."""
    rows = list(teacher_rows)
    for (label, shots, seed, method), cfg in cfgs.items():
        path = Path(cfg.out) / "results.json"
        if path.is_file():
            rows.append(_row(label, shots, seed, method, str(Path(cfg.out).relative_to(out)), json.loads(path.read_text())))
    _write_rows(out / "results.csv", rows)


def _await(futures: dict[tuple, Future], gather: Any, stop_marker: Path) -> list[str]:
    """Wait for the runs, gathering results as each ends; one failed run does not lose the others.
    A stop (Ctrl-C in this process, or a run interrupted by its signal) cancels every queued run and
    leaves ``stop_marker`` for the runs a worker has already taken off the queue: the runs in
    progress save their state and stop, nothing else starts."""
    failures = []
    try:
        for job in as_completed(futures.values()):
            key = next(k for k, f in futures.items() if f is job)
            try:
                job.result()
            except TrainingInterrupted:
                raise
            except Exception as err:
                failures.append(f"{'/'.join(map(str, key))}: {err}")
                log.error("run %s failed: %s", key, err)
            gather()
    except (KeyboardInterrupt, TrainingInterrupted):
        stop_marker.touch()
        cancelled = sum(f.cancel() for f in futures.values())
        log.warning("sweep stopped: %d queued run(s) not started; run the same command again to go on", cancelled)
        raise
    return failures


def run_sweep(sweep: SweepConfig, base: RunConfig, out: str | Path, *, progress: bool = False) -> Path:
    """Run every missing run of the grid; write ``<out>/results.csv``; return its path."""
    started, out = time.time(), Path(out)
    base = resolve_teacher(base)  # teacher.kind=auto made concrete once, for every run and the store's name
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "sweep.yaml", yaml.safe_dump({"sweep": {**asdict(sweep), "methods": list(sweep.methods),
        "shots": list(sweep.shots), "seeds": list(sweep.seeds),
        "teacher_methods": {k: list(v) for k, v in sweep.teacher_methods.items()}}, "run": base.to_dict()}, sort_keys=False))
    cfgs = sweep.runs(base, out)
    stop_marker = out / STOP_MARKER
    stop_marker.unlink(missing_ok=True)  # a stop of an earlier invocation
    todo = {key: cfg for key, cfg in cfgs.items() if not _finished(cfg)}
    log.info("sweep: %d runs, %d already finished", len(cfgs), len(cfgs) - len(todo))
    workers = sweep.workers or free_cores()
    cache_path = store_path(out, base)
    with executor(workers) as pool:
        # 1. the base teacher's outputs for every view any run (or the report) needs
        cache = fill_teacher_cache(list(cfgs.values()), cache_path, pool, workers, progress=progress)
        bar = progress_bar(total=len(todo), desc="sweep", enabled=progress)
        # 2. few-shot teachers, fitted here on the cached outputs; the teachers' test accuracy
        adapters, teacher_rows = _fit_teachers(cfgs, cache)
        # 3. the runs, longest first, in worker processes of one thread each
        threads = 1 if workers > 1 else free_cores()
        futures: dict[tuple, Future] = {}
        for key in sorted(todo, key=lambda k: (-k[1], k)):
            job = pool.submit(_run_job, todo[key].override({"threads": threads}), cache_path,
                              adapters[(*key[:3], todo[key].adapter)], stop_marker)
            job.add_done_callback(lambda _: bar.update())
            futures[key] = job
        _gather(cfgs, teacher_rows, out)  # results.csv grows as runs finish: `dho report` works mid-sweep
        failures = _await(futures, lambda: _gather(cfgs, teacher_rows, out), stop_marker)
    bar.close()
    _gather(cfgs, teacher_rows, out)
    log.info("sweep done in %.0f s: %s", time.time() - started, out / "results.csv")
    write_text_atomic(out / "sweep_time.json", json.dumps({"wall_time_s": round(time.time() - started, 1), "runs_trained": len(todo),
                                                     "workers": workers, "failures": failures}, indent=1))
    if failures:
        raise RuntimeError(f"{len(failures)} sweep run(s) failed; first: {failures[0]}")
    return out / "results.csv"
