"""The `dho` command line: argv -> config -> one library call -> printed result and exit code."""

from __future__ import annotations

import argparse
import csv
import errno
import json
import logging
import os
import sys
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("dho")
SPLITS = ("test", "val", "labeled", "unlabeled")


def _progress() -> bool:
    return sys.stderr.isatty()


def _pct(value) -> str:
    return f"{100 * value:6.2f}%" if isinstance(value, float) else "     -"


def _print_scores(title: str, scores: dict) -> None:
    print(title)
    for key in ("mixed", "ce_head", "kd_head", "teacher"):
        if key in scores:
            print(f"  {key:<8} {_pct(scores[key])}")
    if "agreement" in scores:
        print("  heads    " + ", ".join(f"{k}={v}" for k, v in scores["agreement"].items()))


def _write_json(out: str | None, name: str, data: dict) -> None:
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / name).write_text(json.dumps(data, indent=1))
        print(f"wrote {Path(out) / name}")


# ---- commands ------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .train import train

    overrides = list(args.overrides) + (["data.skip_bad=true"] if args.skip_bad else [])
    if args.resume:  # the run's own resolved config; overrides may only change where and how fast it runs
        run = Path(args.resume)
        if args.config or (args.out and Path(args.out) != run):
            raise ConfigError("--resume continues a run with its own config.yaml: leave out --config and --out")
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"nothing to resume: {run / 'config.yaml'} does not exist")
        cfg = load_config(run / "config.yaml", overrides + [f"out={run}"])
    else:
        cfg = load_config(args.config, overrides + ([f"out={args.out}"] if args.out else []))
    try:
        result = train(cfg, progress=_progress(), resume=bool(args.resume))
    finally:
        _end_process_group()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for all
        return 0
    r = result.results
    _print_scores(f"{r['method']} on {cfg.data.root}: test accuracy", r["test"])
    print(f"  alpha={r['alpha']:.2f} beta={r['beta']:.2f} ({r['selection']})")
    print(f"run directory: {result.run_dir}")
    return 0


def _end_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.audit import audit_folder

    report = audit_folder(args.root, timeout=args.timeout, workers=args.workers)
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
    print("clean" if report.clean else "not clean: fix or remove the files above, or train with --skip-bad")
    return 0 if report.clean else 1


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    from .config import load_config
    from .precompute import cache_teacher

    cfg = load_config(args.config, args.overrides)
    cache = cache_teacher(cfg, args.out, dtype=args.dtype, topk=args.topk, workers=args.workers,
                          eval_splits=not args.no_eval)
    meta = cache.store.meta
    print(f"teacher {meta['teacher']}: {len(cache)} views ({meta['dtype']}, "
          f"{'top-' + str(meta['topk']) + ' logits' if meta['topk'] else 'all logits'}, {meta['feature_dim']}-d features) "
          f"in {len(meta['shards'])} shard(s)")
    print(f"wrote {args.out}; train with teacher.cache={args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint

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
    from .evaluate import checkpoint_logits, score

    logits, meta, student = checkpoint_logits(args.checkpoint, args.split, args.data, with_teacher=args.teacher,
                                              device=args.device, progress=_progress(), variant=args.variant)
    alpha = student.alpha if args.alpha is None else args.alpha
    beta = student.beta if args.beta is None else args.beta
    scores = {"alpha": alpha, "beta": beta, "split": args.variant or args.split, **score(logits, alpha, beta)}
    where = f"{args.variant} at {args.data}" if args.variant else args.data or args.split
    _print_scores(f"{args.checkpoint} on {where} (alpha={alpha:.2f}, beta={beta:.2f})", scores)
    _write_json(args.out, "eval.json", scores)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .checkpoint import update_mixing
    from .evaluate import checkpoint_logits
    from .mixing import DEFAULT_ALPHAS, DEFAULT_BETAS, mixing_grid, search_mixing

    if args.split == "test" and args.data is None:
        raise ValueError("refusing to tune alpha/beta on the test split; use --split val (selection never sees test)")
    logits, _, student = checkpoint_logits(args.checkpoint, args.split, args.data, device=args.device, progress=_progress())
    if not student.dual_head:
        raise ValueError("this checkpoint has a single head; there is nothing to mix")
    best = search_mixing(logits.ce, logits.kd, logits.labels)
    grid = mixing_grid(logits.ce, logits.kd, logits.labels, DEFAULT_ALPHAS, DEFAULT_BETAS)
    print(f"best on {args.data or args.split}: alpha={best.alpha:.2f} beta={best.beta:.2f} accuracy={_pct(best.accuracy).strip()}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "grid.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["beta", "alpha", "accuracy"])
            for bi, b in enumerate(DEFAULT_BETAS):
                for ai, a in enumerate(DEFAULT_ALPHAS):
                    writer.writerow([b, a, f"{float(grid[bi, ai]):.6f}"])
        print(f"wrote {out / 'grid.csv'}")
        _write_json(args.out, "tune.json", {"split": args.split, **best._asdict()})
    if args.write:
        update_mixing(args.checkpoint, best.alpha, best.beta, mixing={"selection": f"dho tune on {args.split}", **best._asdict()})
        print(f"updated alpha/beta in {args.checkpoint}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .checkpoint import load_student
    from .predict import expand_paths, predict_files

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
    from .checkpoint import load_metadata
    from .released import import_checkpoint, read_class_names

    out = import_checkpoint(args.file, args.out, args.arch, read_class_names(args.classes),
                            alpha_convention=args.alpha_convention, image_size=args.image_size)
    meta = load_metadata(out)
    print(f"wrote {out}: {args.arch} student, {len(meta['classes'])} classes, alpha={meta['alpha']:.2f} "
          f"(the file's {meta['imported']['alpha_in_file']:.2f}, {args.alpha_convention} convention), beta={meta['beta']:.2f}")
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from .config import load_config
    from .evaluate import zeroshot_accuracy

    cfg = load_config(args.config, args.overrides)
    scores = zeroshot_accuracy(cfg, args.split, progress=_progress())
    print(f"{scores['teacher_id']} zero-shot on {cfg.data.root} [{args.split}, n={scores['n']}]: {_pct(scores['teacher']).strip()}")
    _write_json(args.out, "zeroshot.json", scores)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data import make_synthetic_folder

    root = make_synthetic_folder(args.out, per_class={"train": args.train, "test": args.test}, seed=args.seed)
    print(f"wrote a synthetic ImageFolder tree to {root}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .demo import LABELS, DemoSettings, run_demo

    given = {"shots": args.shots, "student": args.student, "epochs": args.epochs, "max_unlabeled": args.max_unlabeled}
    settings = replace(DemoSettings(seeds=tuple(args.seeds)), **{k: v for k, v in given.items() if v is not None})
    if args.max_unlabeled == "all":
        settings = replace(settings, max_unlabeled=None)
    if settings.student != "efficientnet_lite0":  # the one student whose ImageNet weights install offline
        settings = replace(settings, student_pretrained=False)
    if args.synthetic:  # seconds on a CPU: synthetic data, synthetic teacher, small random student
        from .data import make_synthetic_folder

        root = make_synthetic_folder(Path(args.out) / "data", per_class={"train": 60, "test": 30}, seed=0)
        settings = replace(settings, teacher="synthetic", student="resnet18", student_pretrained=False,
                           student_size=32, teacher_size=32, shots=min(settings.shots, 8), epochs=min(settings.epochs, 20),
                           max_unlabeled=None, val_fraction=0.1, batch_size=16)
    elif args.data:
        root = Path(args.data)
    else:
        from .data.cifar import prepare_cifar10

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
    from .sweep import load_sweep, run_sweep

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
    from .report import write_report

    written = write_report(args.sweep, args.out)
    table = written.get("table.md")
    if table is not None:
        print(table.read_text())
    for name, path in written.items():
        print(f"wrote {path}")
    return 0


def cmd_linear_eval(args: argparse.Namespace) -> int:
    from .features import linear_eval_run

    r = linear_eval_run(args.run, data_root=args.data, train_split=args.train_split, device=args.device,
                        progress=_progress())
    print(f"linear evaluation of {args.run} ({r['n_train']} training images, {r['n_test']} test):")
    print(f"  top-1 {_pct(r['top1'])}   top-{r.get('top5_k', 5)} {_pct(r['top5'])}")
    print(f"wrote {Path(args.run) / 'linear_eval.json'}")
    return 0


def cmd_tsne(args: argparse.Namespace) -> int:
    from .features import tsne_run

    path = tsne_run(args.run, args.out, split=args.split, max_points=args.max_points, data_root=args.data,
                    device=args.device, progress=_progress())
    print(f"wrote {path}")
    return 0


# ---- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dho", description="Dual-Head Optimization: distil a CLIP teacher into a small classifier.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    parser.add_argument("--version", action="version", version=f"dho {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a student (writes config.yaml, metrics.jsonl, checkpoint/, results.json)")
    p.add_argument("--config", help="YAML config (defaults when omitted)")
    p.add_argument("--out", help="run directory (same as out=DIR)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from RUN/state (its own config)")
    p.add_argument("--skip-bad", action="store_true", help="check every image first and train without undecodable ones "
                   "(listed in RUN/bad_files.json)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=3e-4")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = data_sub.add_parser("check", help="decode every image under a time limit; report bad and odd files, "
                            "empty classes, duplicates across splits (exit 1 unless clean)")
    p.add_argument("root", help="an ImageFolder tree (train/, val/, test/ or class folders)")
    p.add_argument("--out", help="directory for data_check.json")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds allowed per file (default 30)")
    p.add_argument("--workers", type=_positive_int, help="decode processes (default: the free cores)")
    p.add_argument("--show", type=int, default=20, help="files listed per kind (default 20)")
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("cache-teacher", help="compute the teacher's outputs for every view a training run draws, once")
    p.add_argument("--config", help="the run's YAML config (defaults when omitted)")
    p.add_argument("--out", required=True, help="store directory (appended to when it exists)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored precision (default float16)")
    p.add_argument("--topk", type=_positive_int, help="keep only the K largest logits of each view")
    p.add_argument("--workers", type=_positive_int, help="one-thread worker processes (default: the free cores)")
    p.add_argument("--no-eval", action="store_true", help="skip the validation and test centre crops")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as for train")
    p.set_defaults(func=cmd_cache_teacher)

    def checkpoint_args(p: argparse.ArgumentParser, default_split: str) -> None:
        p.add_argument("checkpoint", help="a run's checkpoint directory or its model.safetensors")
        p.add_argument("--split", default=default_split, choices=SPLITS, help=f"split of the run (default {default_split})")
        p.add_argument("--data", help="an ImageFolder tree to use instead of the run's split")
        p.add_argument("--device", default="cpu")
        p.add_argument("--out", help="directory for the written results")

    p = sub.add_parser("export", help="one ONNX/TorchScript graph: uint8 images -> mixed probabilities; checked, with a model card")
    p.add_argument("checkpoint", help="a run's checkpoint directory or its model.safetensors")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", required=True, help="the model file to write (e.g. student.onnx); the card goes beside it (.md)")
    p.add_argument("--heads", action="store_true", help="also output each head's probabilities")
    p.add_argument("--alpha", type=float, help="override the checkpoint's alpha")
    p.add_argument("--beta", type=float, help="override the checkpoint's beta")
    p.add_argument("--images", nargs="+", metavar="PATH", help="images to check parity on (default: the run's --split)")
    p.add_argument("--split", default="test", choices=SPLITS, help="the run's split to check on (default test)")
    p.add_argument("--check", type=_positive_int, default=64, help="how many images to check (default 64)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed difference from PyTorch (default 1e-4)")
    p.add_argument("--no-card", action="store_true", help="do not write the model card")
    p.add_argument("--no-teacher-speed", action="store_true", help="do not rebuild the teacher to time it")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="accuracy of each head, the mix and (with --teacher) the teacher")
    checkpoint_args(p, "test")
    p.add_argument("--teacher", action="store_true", help="also score the teacher (rebuilt from the checkpoint's config)")
    p.add_argument("--variant", choices=("imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a"),
                   help="--data is this ImageNet test set (R and A: scored on their 200 classes)")
    p.add_argument("--alpha", type=float, help="override the checkpoint's alpha")
    p.add_argument("--beta", type=float, help="override the checkpoint's beta")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("tune", help="search alpha/beta on a validation split; writes grid.csv")
    checkpoint_args(p, "val")
    p.add_argument("--write", action="store_true", help="store the best alpha/beta in the checkpoint")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("predict", help="predict image files, folders or globs")
    p.add_argument("checkpoint")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.add_argument("--topk", type=_positive_int, default=1)
    p.add_argument("--alpha", type=float)
    p.add_argument("--beta", type=float)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write here instead of stdout")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("sweep", help="methods x shots x seeds (x teachers) from one sweep file; resumable")
    p.add_argument("config", help="sweep YAML: a 'sweep:' grid and a 'run:' config (see configs/sweep-*.yaml)")
    p.add_argument("--out", help="sweep directory (default: the run config's out)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the run config")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="tables (markdown, CSV) and plots of a sweep directory")
    p.add_argument("sweep", help="a directory written by `dho sweep`")
    p.add_argument("--out", help="where to write (default SWEEP/report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("linear-eval", help="linear evaluation of a run's frozen student features on fully labeled data")
    p.add_argument("run", help="a run directory (or its checkpoint/)")
    p.add_argument("--train-split", default="labeled+unlabeled", help="training images, '+'-joined split names")
    p.add_argument("--data", help="the dataset root, if it moved since training")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_linear_eval)

    p = sub.add_parser("tsne", help="t-SNE plot of a run's student features")
    p.add_argument("run", help="a run directory (or its checkpoint/)")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--max-points", type=_positive_int, default=2000)
    p.add_argument("--data", help="the dataset root, if it moved since training")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="PNG path (default RUN/tsne_SPLIT.png)")
    p.set_defaults(func=cmd_tsne)

    p = sub.add_parser("import-checkpoint", help="convert a DHO authors' .pt student into a dho checkpoint")
    p.add_argument("file", help="the authors' checkpoint (model_state_dict, alpha, beta)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--arch", required=True, help="its backbone: resnet18, resnet50 (DINO), mobilenet_v2, "
                   "or a CLIP tower's open_clip name (ViT-B-16-quickgelu, ViT-L-14-quickgelu, ...)")
    p.add_argument("--image-size", type=_positive_int, default=224, help="its input size (default 224; 336 for ViT-L/14-336)")
    p.add_argument("--classes", required=True, help="class names in label order: a text file (one a line), "
                   "a dho splits.json or a CoOp split_zhou_*.json")
    p.add_argument("--alpha-convention", choices=("authors", "ours"), default="authors",
                   help="authors (default): their alpha weighs the KD head, so ours = 1 - theirs")
    p.set_defaults(func=cmd_import_checkpoint)

    p = sub.add_parser("zeroshot", help="the teacher's zero-shot accuracy on a split")
    p.add_argument("--config")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--out")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_zeroshot)

    p = sub.add_parser("synth", help="write a small synthetic ImageFolder dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=_positive_int, default=60, help="training images per class")
    p.add_argument("--test", type=_positive_int, default=30, help="test images per class")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("demo", help="teacher, CE, CE+KD and DHO side by side on CIFAR-10 (or --data DIR)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", help="an ImageFolder tree instead of CIFAR-10")
    p.add_argument("--shots", type=_positive_int, help="labeled images per class (default 16)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run of every method per seed")
    p.add_argument("--student", help="student backbone (default efficientnet_lite0 with ImageNet weights; others start random)")
    p.add_argument("--epochs", type=_positive_int, help="passes over the labeled set (default 60)")
    p.add_argument("--max-unlabeled", type=_all_or_int, help="unlabeled images used (default 5000; 'all' for every one)")
    p.add_argument("--synthetic", action="store_true", help="a seconds-long run on synthetic data and teacher")
    p.set_defaults(func=cmd_demo)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _all_or_int(text: str) -> int | str:
    return text if text == "all" else _positive_int(text)


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    from .config import ConfigError
    from .stopping import TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as err:
        print(f"dho: {err}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print("dho: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError, OSError, MemoryError, FloatingPointError) as err:
        print(f"dho: error: {_describe(err)}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1


def _describe(err: BaseException) -> str:
    """One line: the error's first line, with what to do for the failures a user can fix."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        return (f"no space left on the device{where}; free some space and run again "
                "(an interrupted training run continues with dho train --resume RUN)")
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or any(
            s in text.lower() for s in ("out of memory", "can't allocate memory", "cannot allocate memory")):
        return f"out of memory ({text[:160]}); lower optim.batch_size or eval.batch_size, or set data.in_memory=false"
    return text


if __name__ == "__main__":
    sys.exit(main())
