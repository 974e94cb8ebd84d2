"""What each `dho` command does: parsed arguments -> one library call -> printed result and exit code.

The grammar of the command line and its error reporting are in :mod:`dho.cli.app`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..files import write_text_atomic

__all__ = ["cmd_cache_teacher", "cmd_config", "cmd_data_check", "cmd_demo", "cmd_eval", "cmd_export", "cmd_fit",
           "cmd_import_checkpoint", "cmd_linear_eval", "cmd_predict", "cmd_report", "cmd_suggest", "cmd_sweep",
           "cmd_synth", "cmd_train", "cmd_tsne", "cmd_tune", "cmd_zeroshot"]

log = logging.getLogger("dho")


def _progress() -> bool:
    """Progress on long work: a bar on a terminal, a line every few seconds off one (dho.progress)."""
    return True


def _pct(value: float | None) -> str:
    return f"{100 * value:6.2f}%" if isinstance(value, float) else "     -"


def _print_scores(title: str, scores: Mapping[str, Any]) -> None:
    print(title)
    for key in ("mixed", "ce_head", "kd_head", "teacher"):
        if key in scores:
            print(f"  {key:<8} {_pct(scores[key])}")
    if "agreement" in scores:
        print("  heads    " + ", ".join(f"{k}={v}" for k, v in scores["agreement"].items()))


def _write_json(out: str | None, name: str, data: dict) -> None:
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(out) / name, json.dumps(data, indent=1))
        print(f"wrote {Path(out) / name}")


# ---- commands ------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load_config
    from ..loop import train
    from ..training.rundir import next_free_run_dir
    from ..training.setup import resume_config

    overrides = list(args.overrides) + (["data.skip_bad=true"] if args.skip_bad else [])
    if args.resume:  # the run's own resolved config; overrides may only change where and how fast it runs
        run = Path(args.resume)
        if args.config or (args.out and Path(args.out) != run):
            raise ConfigError("--resume continues a run with its own config.yaml: leave out --config and --out")
        cfg = resume_config(run, [*overrides, f"out={run}"])
    else:
        cfg = load_config(args.config, overrides + ([f"out={args.out}"] if args.out else []))
        if not args.exist_ok and not _names_out(args, overrides):  # the default directory: runs/dho, runs/dho2, ...
            cfg = cfg.override({"out": str(next_free_run_dir(cfg.out))})
    try:
        result = train(cfg, progress=_progress(), resume=bool(args.resume), overwrite=args.exist_ok)
    finally:
        _end_process_group()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for all
        return 0
    r = result.results
    if r["test"]:
        _print_scores(f"{r['method']} on {cfg.data.root}: test accuracy", r["test"])
    else:  # no test split (a folder tree without test/): the validation images alpha/beta were tuned on
        _print_scores(f"{r['method']} on {cfg.data.root}: validation accuracy (no test split; alpha/beta tuned on it)", r["val"])
    print(f"  alpha={r['alpha']:.2f} beta={r['beta']:.2f} ({r['selection']})")
    print(f"run directory: {result.run_dir}")
    return 0


def _names_out(args: argparse.Namespace, overrides: list[str]) -> bool:
    """Whether the user chose the run directory (--out, out=DIR, or the config file's out)."""
    from ..coerce import read_yaml

    if args.out or any(o.partition("=")[0].strip() == "out" for o in overrides):
        return True
    data = read_yaml(args.config) if args.config else None
    return isinstance(data, dict) and "out" in data


def _end_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cmd_fit(args: argparse.Namespace) -> int:
    from ..experiments.fit import FitSettings, fit
    from ..training.rundir import next_free_run_dir

    if not args.unlabeled:
        raise ValueError("name the unlabeled pool with --unlabeled (DHO learns from the teacher on unlabeled images)")
    out = Path(args.out) if args.out else next_free_run_dir("runs/fit", marker="fit.json")
    settings = FitSettings(steps=args.steps, overrides=tuple(args.overrides))
    r = fit(args.labeled, args.unlabeled, out, test=args.test, settings=settings, progress=_progress())
    where = "test" if r.test else "validation"
    print(f"fit {args.labeled}: " + ", ".join(f"{name} {100 * acc:.2f}%" for name, acc in r.val.items()) + " on validation")
    if r.test:
        print("  on --test: " + ", ".join(f"{name} {100 * acc:.2f}%" for name, acc in r.test.items()))
    print(f"shipped {r.chosen} (best on validation): {r.files['model']}")
    for label, key in (("model card", "card"), (f"per-class accuracy ({where})", "per_class"), ("confusion matrix", "confusion")):
        if key in r.files:
            print(f"  {label}: {r.files[key]}")
    print(f"fit directory: {r.out} (each model's run: {', '.join(str(r.out / n) for n in r.val)})")
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..experiments.suggest import suggest

    ckpt = resolve_checkpoint(args.checkpoint)
    out = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent).parent / "suggest"
    picks = suggest(args.checkpoint, args.unlabeled, args.n, out, dedup=args.dedup, progress=_progress())
    classes = sorted({p.predicted for p in picks})
    print(f"{len(picks)} images to label next ({len(classes)} predicted classes among them), most informative first:")
    for rank, pick in enumerate(picks[:5], 1):
        print(f"  {rank}. {pick.path}  (predicted {pick.predicted}, score {pick.score:.3f})")
    print(f"wrote {out / 'suggestions.csv'} and {out / 'suggestions.png'}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from ..data.audit import audit_benchmark, audit_folder

    if args.format == "folder":
        report = audit_folder(args.root, timeout=args.timeout, workers=args.workers)
    else:  # every file its split lists name
        report = audit_benchmark(args.format, args.root, args.dataset, timeout=args.timeout, workers=args.workers)
    summary = report.summary()
    print(f"{args.root}: {summary['images']} image files, {len(report.classes)} classes")
    for split, counts in report.counts.items():
        print(f"  {split:<6} {sum(counts.values())} decodable, {min(counts.values())}-{max(counts.values())} per class")
    bad = report.bad
    print(f"bad: {len(bad)}" + (f" ({', '.join(f'{k} {n}' for k, n in summary['bad'].items())})" if bad else ""))
    for f in bad[:args.show]:
        print(f"  {f['path']}: {f['error']}")
    if summary["odd"]:
        print("odd, decoded by the stated policy (EXIF applied, alpha on white, 16-bit scaled, CMYK to RGB): "
              + ", ".join(f"{k} {n}" for k, n in summary["odd"].items()))
        for f in report.odd[:args.show]:
            print(f"  {f['path']}: " + "; ".join(text for _, text in f["notes"]))
    for problem in report.problems:
        print(f"problem: {problem}")
    cross = report.cross_split_duplicates
    if report.duplicates:
        print(f"duplicates: {len(report.duplicates)} groups of files with the same content, {len(cross)} across splits")
        for group in (cross or report.duplicates)[:args.show]:
            print("  " + " = ".join(group))
    _write_json(args.out, "data_check.json", report.to_dict())
    print("clean" if report.clean else "not clean: fix or remove the files above, or train with --skip-bad (data.skip_bad=true)")
    return 0 if report.clean else 1


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..training.precompute import cache_teacher

    cfg = load_config(args.config, args.overrides)
    cache = cache_teacher(cfg, args.out, dtype=args.dtype, topk=args.topk, workers=args.workers,
                          eval_splits=not args.no_eval, progress=_progress(), shard=args.shard)
    assert cache.store is not None  # the cache was saved to its store at args.out
    meta = cache.store.meta
    print(f"teacher {meta['teacher']}: {len(cache)} views ({meta['dtype']}, "
          f"{'top-' + str(meta['topk']) + ' logits' if meta['topk'] else 'all logits'}, {meta['feature_dim']}-d features) "
          f"in {len(meta['shards'])} shard(s)")
    print(f"wrote {args.out}; train with teacher.cache={args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..ship.export import export_checkpoint

    r = export_checkpoint(args.checkpoint, args.out, args.format, images=args.images, split=args.split, count=args.check,
                          alpha=args.alpha, beta=args.beta, heads=args.heads, atol=args.atol, card=not args.no_card,
                          teacher_speed=not args.no_teacher_speed)
    speed = r["images_per_s"]
    teacher = f"{speed['teacher']:.1f} images/s" if isinstance(speed["teacher"], float) else f"not measured ({speed['teacher']})"
    print(f"wrote {r['path']} ({r['format']}, {r['bytes'] / 1e6:.1f} MB, {r['params'] / 1e6:.2f}M parameters; "
          f"alpha={r['alpha']:.2f} beta={r['beta']:.2f} built in)")
    print(f"  parity: max |exported - PyTorch| = {r['max_abs_diff']:.2e} on {r['images_checked']} images")
    print(f"  speed on this CPU: student {speed['student']:.1f} images/s, teacher {teacher}")
    if "card" in r:
        print(f"wrote {r['card']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluate import score
    from ..ship.scoring import checkpoint_logits

    logits, _, student = checkpoint_logits(args.checkpoint, args.split, args.data, with_teacher=args.teacher,
                                           device=args.device, progress=_progress(), variant=args.variant)
    alpha = student.alpha if args.alpha is None else args.alpha
    beta = student.beta if args.beta is None else args.beta
    scores = {"alpha": alpha, "beta": beta, "split": args.variant or args.split, **score(logits, alpha, beta)}
    where = f"{args.variant} at {args.data}" if args.variant else args.data or args.split
    _print_scores(f"{args.checkpoint} on {where} (alpha={alpha:.2f}, beta={beta:.2f})", scores)
    _write_json(args.out, "eval.json", scores)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from ..checkpoint import update_mixing
    from ..mixing import search_mixing, write_grid_csv
    from ..ship.scoring import checkpoint_logits

    if args.split == "test" and args.data is None:
        raise ValueError("refusing to tune alpha/beta on the test split; use --split val (selection never sees test)")
    logits, _, student = checkpoint_logits(args.checkpoint, args.split, args.data, device=args.device, progress=_progress())
    if not student.dual_head:
        raise ValueError("this checkpoint has a single head; there is nothing to mix")
    assert logits.ce is not None and logits.kd is not None  # a dual-head student's logits
    best = search_mixing(logits.ce, logits.kd, logits.labels)
    print(f"best on {args.data or args.split}: alpha={best.alpha:.2f} beta={best.beta:.2f} accuracy={_pct(best.accuracy).strip()}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_grid_csv(out / "grid.csv", logits.ce, logits.kd, logits.labels)
        print(f"wrote {out / 'grid.csv'}")
        _write_json(args.out, "tune.json", {"split": args.split, **best._asdict()})
    if args.write:
        update_mixing(args.checkpoint, best.alpha, best.beta, mixing={"selection": f"dho tune on {args.split}", **best._asdict()})
        print(f"updated alpha/beta in {args.checkpoint}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..checkpoint import load_student
    from ..ship.predict import expand_paths, predict_files

    student = load_student(args.checkpoint, device=args.device)
    paths = expand_paths(args.paths)
    out = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        records = predict_files(student, paths, topk=args.topk, alpha=args.alpha, beta=args.beta)
        if args.format == "json":
            json.dump(list(records), out, indent=1)
            out.write("\n")
        else:
            writer = csv.writer(out)
            writer.writerow(["path"] + [f"{k}{i + 1}" for i in range(args.topk) for k in ("label", "score")])
            for rec in records:
                writer.writerow([rec["path"]] + [x for pair in zip(rec["labels"], rec["scores"]) for x in pair])
    finally:
        if args.out:
            out.close()
    return 0


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from ..checkpoint import load_metadata
    from ..ship.released import import_checkpoint, read_class_names

    out = import_checkpoint(args.file, args.out, args.arch, read_class_names(args.classes),
                            alpha_convention=args.alpha_convention, image_size=args.image_size)
    meta = load_metadata(out)
    print(f"wrote {out}: {args.arch} student, {len(meta['classes'])} classes, alpha={meta['alpha']:.2f} "
          f"(the file's {meta['imported']['alpha_in_file']:.2f}, {args.alpha_convention} convention), beta={meta['beta']:.2f}")
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..experiments.zeroshot import zeroshot_accuracy

    cfg = load_config(args.config, args.overrides)
    scores = zeroshot_accuracy(cfg, args.split, progress=_progress())
    print(f"{scores['teacher_id']} zero-shot on {cfg.data.root} [{args.split}, n={scores['n']}]: {_pct(scores['teacher']).strip()}")
    if "teacher_f" in scores:
        print(f"{scores['teacher_f_id']} few-shot ({scores['labeled']} labeled images): {_pct(scores['teacher_f']).strip()}")
    _write_json(args.out, "zeroshot.json", scores)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from ..config_keys import config_keys, format_keys

    print(format_keys(config_keys(args.section)))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from ..data import make_synthetic_folder

    root = make_synthetic_folder(args.out, per_class={"train": args.train, "test": args.test}, seed=args.seed)
    print(f"wrote a synthetic ImageFolder tree to {root}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..experiments.demo import LABELS, DemoSettings, run_demo

    given = {"shots": args.shots, "student": args.student, "epochs": args.epochs, "max_unlabeled": args.max_unlabeled,
             "precision": args.precision}
    settings = replace(DemoSettings(seeds=tuple(args.seeds)), **{k: v for k, v in given.items() if v is not None})
    if args.max_unlabeled == "all":
        settings = replace(settings, max_unlabeled=None)
    if settings.student != "efficientnet_lite0":  # the one student whose ImageNet weights install offline
        settings = replace(settings, student_pretrained=False)
    if args.synthetic:  # seconds on a CPU: synthetic data, synthetic teacher, small random student
        from ..data import make_synthetic_folder

        root = make_synthetic_folder(Path(args.out) / "data", per_class={"train": 60, "test": 30}, seed=0)
        settings = replace(settings, teacher="synthetic", student="resnet18", student_pretrained=False,
                           student_size=32, teacher_size=32, shots=min(settings.shots, 8), epochs=min(settings.epochs, 20),
                           max_unlabeled=None, val_fraction=0.1, batch_size=16)
    elif args.data:
        from ..experiments.fit import input_size_for

        root = Path(args.data)
        settings = replace(settings, student_size=input_size_for(root))  # CIFAR-10's 64 px would starve larger photos
        print(f"student input size for {root}: {settings.student_size} px (twice the images' median shorter side, 64-128)")
    else:
        from ..data.cifar import prepare_cifar10

        root = prepare_cifar10()
    results = run_demo(root, Path(args.out), settings, progress=_progress())
    acc, std = results["accuracy"], results["accuracy_std"]
    seeds = len(results["per_seed"])
    print(f"\ntest accuracy on {root} ({settings.shots} shots/class, {seeds} seed{'s' * (seeds > 1)}):")
    for key, label in LABELS.items():
        spread = f" +- {100 * std[key]:.2f}" if seeds > 1 else ""
        print(f"  {label:<20} {_pct(acc[key])}{spread}")
    print(f"wall time {results['wall_time_s']:.0f} s; wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'accuracy.png'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..experiments.sweep import load_sweep, run_sweep

    sweep, base = load_sweep(args.config, args.overrides)
    out = Path(args.out or base.out)
    path = run_sweep(sweep, base, out, progress=_progress())
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    print(f"{'teacher':<14} {'shots':>5} {'seed':>4}  {'method':<14} {'test':>8}")
    for r in rows:
        test = float(r["test"]) if r["test"] else None
        print(f"{r['teacher']:<14} {r['shots']:>5} {r['seed']:>4}  {r['method']:<14} {_pct(test)}")
    print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..experiments.report import write_report

    written = write_report(args.sweep, args.out)
    table = written.get("table.md")
    if table is not None:
        print(table.read_text())
    for path in written.values():
        print(f"wrote {path}")
    return 0


def cmd_linear_eval(args: argparse.Namespace) -> int:
    from ..experiments.features import linear_eval_run

    r = linear_eval_run(args.run, data_root=args.data, train_split=args.train_split, device=args.device,
                        progress=_progress())
    print(f"linear evaluation of {args.run} ({r['n_train']} training images, {r['n_test']} test):")
    print(f"  top-1 {_pct(r['top1'])}   top-{r.get('top5_k', 5)} {_pct(r['top5'])}")
    print(f"wrote {Path(args.run) / 'linear_eval.json'}")
    return 0


def cmd_tsne(args: argparse.Namespace) -> int:
    from ..experiments.features import tsne_run

    path = tsne_run(args.run, args.out, split=args.split, max_points=args.max_points, data_root=args.data,
                    device=args.device, progress=_progress())
    print(f"wrote {path}")
    return 0


# ---- parser --------------------------------------------------------------------------------
