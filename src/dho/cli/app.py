"""The `dho` command line: argv -> config -> one library call -> printed result and exit code.

This module is the grammar (the parser) and the error reporting; :mod:`dho.cli.commands` does the work.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
from typing import Any

from .commands import (
    cmd_cache_teacher,
    cmd_config,
    cmd_data_check,
    cmd_demo,
    cmd_eval,
    cmd_export,
    cmd_fit,
    cmd_import_checkpoint,
    cmd_linear_eval,
    cmd_predict,
    cmd_report,
    cmd_suggest,
    cmd_sweep,
    cmd_synth,
    cmd_train,
    cmd_tsne,
    cmd_tune,
    cmd_zeroshot,
)

__all__ = ["build_parser", "main"]

SPLITS = ("test", "val", "labeled", "unlabeled")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dho", description="Dual-Head Optimization: distil a CLIP teacher into a small classifier.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also the libraries' own progress notes (open_clip, sentence-transformers, ...)")
    parser.add_argument("--traceback", action="store_true", help="on an error, the full traceback instead of one line")
    parser.add_argument("--version", action="version", version=f"dho {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run_commands(sub)
    _student_commands(sub)
    _experiment_commands(sub)
    _other_commands(sub)
    return parser


def _run_commands(sub: Any) -> None:
    """Commands for training a run and what it reads: fit, train, data check, cache-teacher."""
    p = sub.add_parser("fit", help="labeled class folders (+ an unlabeled pool) -> a checked, compared, exported model")
    p.add_argument("labeled", metavar="LABELED", help="labeled images in class folders (LABELED/<class>/*.jpg)")
    p.add_argument("--unlabeled", help="the unlabeled pool: a folder (searched recursively), a text file of paths or a glob")
    p.add_argument("--out", help="the fit's directory (default runs/fit, then runs/fit2, ...)")
    p.add_argument("--test", metavar="DIR", help="labeled test images in class folders: every model scored on them")
    p.add_argument("--steps", type=_positive_int, default=300, help="training steps of each model (default 300)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run keys for every model, e.g. student.image_size=160")
    p.set_defaults(func=cmd_fit, intermixed=True)

    p = sub.add_parser("train", help="train a student (writes config.yaml, metrics.jsonl, checkpoint/, results.json)")
    p.add_argument("--config", help="YAML config (defaults when omitted)")
    p.add_argument("--out", help="run directory (same as out=DIR)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from RUN/state (its own config)")
    p.add_argument("--exist-ok", action="store_true", help="replace the finished or interrupted run in the run directory "
                   "(without it a finished run is never overwritten; the default runs/dho becomes runs/dho2, ...)")
    p.add_argument("--skip-bad", action="store_true", help="check every image first and train without undecodable ones "
                   "(listed in RUN/bad_files.json)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=3e-4")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = data_sub.add_parser("check", help="decode every image under a time limit; report bad and odd files, "
                            "empty classes, duplicates across splits (exit 1 unless clean)")
    p.add_argument("root", help="an ImageFolder tree (train/, val/, test/ or class folders), or a benchmark's "
                   "root with --format")
    p.add_argument("--format", choices=("folder", "coop", "fgvc", "imagenet"), default="folder",
                   help="how the root lays out its splits, as data.format (default folder)")
    p.add_argument("--dataset", help="the CoOp dataset with --format coop, as data.dataset (e.g. caltech101)")
    p.add_argument("--out", help="directory for data_check.json")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds allowed per file (default 30, as in training)")
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
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                   help="compute only part I of N (0-based) of the missing outputs: N processes or nodes, one store")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as for train")
    p.set_defaults(func=cmd_cache_teacher)


def _student_commands(sub: Any) -> None:
    """Commands for a trained student: export, eval, tune, predict."""
    p = sub.add_parser("export", help="one ONNX/TorchScript graph: uint8 images -> mixed probabilities; checked, with a model card")
    p.add_argument("checkpoint", help="a run directory, its checkpoint directory or its model.safetensors")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", help="a directory (model.onnx / model.pt and model.md go in it; default RUN/export) "
                                  "or a model file (student.onnx: its card goes beside it, student.md)")
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
    _checkpoint_args(p, "test")
    p.add_argument("--teacher", action="store_true", help="also score the teacher (rebuilt from the checkpoint's config)")
    p.add_argument("--variant", choices=("imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a"),
                   help="--data is this ImageNet test set (R and A: scored on their 200 classes)")
    p.add_argument("--alpha", type=float, help="override the checkpoint's alpha")
    p.add_argument("--beta", type=float, help="override the checkpoint's beta")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("tune", help="search alpha/beta on a validation split; writes grid.csv")
    _checkpoint_args(p, "val")
    p.add_argument("--write", action="store_true", help="store the best alpha/beta in the checkpoint")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("predict", help="predict image files, folders or globs")
    p.add_argument("checkpoint", help="a run directory, its checkpoint directory or its model.safetensors")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.add_argument("--topk", type=_positive_int, default=1)
    p.add_argument("--alpha", type=float)
    p.add_argument("--beta", type=float)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write here instead of stdout")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("suggest", help="which unlabeled images to label next: where the heads and the teacher disagree")
    p.add_argument("checkpoint", metavar="RUN", help="a run directory (or its checkpoint)")
    p.add_argument("--unlabeled", required=True, help="the pool: a folder (searched recursively), a text file of paths or a glob")
    p.add_argument("--n", type=_positive_int, default=100, help="how many images to suggest (default 100)")
    p.add_argument("--out", help="directory for suggestions.csv and suggestions.png (default RUN/suggest)")
    p.add_argument("--dedup", type=float, default=0.95, help="skip images this close (feature cosine) to a pick (default 0.95)")
    p.set_defaults(func=cmd_suggest)


def _experiment_commands(sub: Any) -> None:
    """Commands for experiments over runs: sweep, report, linear-eval, tsne."""
    p = sub.add_parser("sweep", help="methods x shots x seeds (x teachers) from one sweep file; resumable")
    p.add_argument("config", help="sweep YAML: a 'sweep:' grid and a 'run:' config (see configs/sweep-*.yaml)")
    p.add_argument("--out", help="sweep directory (default: the run config's out)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the run config")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="tables (markdown, CSV) and plots of a sweep directory (or several, as one table)")
    p.add_argument("sweep", nargs="+", help="directories written by `dho sweep`; a cell found twice is taken from the later")
    p.add_argument("--out", help="where to write (default SWEEP/report of the first)")
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


def _other_commands(sub: Any) -> None:
    """Commands for the authors' checkpoints, the teacher alone, data for trying things, the demo."""
    p = sub.add_parser("import-checkpoint", help="convert a DHO authors' .pt student into a dho checkpoint")
    p.add_argument("file", help="the authors' checkpoint (model_state_dict, alpha, beta)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--arch", required=True, help="its backbone: resnet18, resnet50 (DINO), mobilenet_v2, "
                   "or a CLIP tower's open_clip name (ViT-B-16-quickgelu, ViT-L-14-quickgelu, ...)")
    p.add_argument("--image-size", type=_positive_int, default=224, help="its input size (default 224; 336 for ViT-L/14-336)")
    p.add_argument("--classes", required=True, help="class names in label order: a text file (one a line), "
                   "a dho splits.json or a CoOp split_zhou_*.json")
    p.add_argument("--alpha-convention", choices=("current", "pre-f74da67"), default="current",
                   help="current (default): the saved alpha weighs h_CE, as in their code since commit f74da67; "
                        "pre-f74da67: it weighs h_KD (files of their earlier code), so alpha = 1 - saved")
    p.set_defaults(func=cmd_import_checkpoint)

    p = sub.add_parser("zeroshot", help="the teacher's accuracy on a split: zero-shot, and few-shot with teacher.adapter=tip or tip-f")
    p.add_argument("--config")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--out")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_zeroshot)

    p = sub.add_parser("config", help="every config key: its default, type and what it does")
    p.add_argument("--section", help="only this section's keys (teacher, student, data, loss, optim, eval)")
    p.set_defaults(func=cmd_config)

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
    p.add_argument("--epochs", type=_positive_int, help="passes over the labeled set (default 40)")
    p.add_argument("--max-unlabeled", type=_all_or_int, help="unlabeled images used (default 5000; 'all' for every one)")
    p.add_argument("--synthetic", action="store_true", help="a seconds-long run on synthetic data and teacher")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="autocast of every run (default auto)")
    p.set_defaults(func=cmd_demo)


def _checkpoint_args(p: argparse.ArgumentParser, default_split: str) -> None:
    p.add_argument("checkpoint", help="a run directory, its checkpoint directory or its model.safetensors")
    p.add_argument("--split", default=default_split, choices=SPLITS, help=f"split of the run (default {default_split})")
    p.add_argument("--data", help="an ImageFolder tree to use instead of the run's split")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="directory for the written results")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _shard(text: str) -> tuple[int, int]:
    """``I/N`` with 0 <= I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N (e.g. 0/2)") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text}: I must be in 0..N-1")
    return i, n


def _all_or_int(text: str) -> int | str:
    return text if text == "all" else _positive_int(text)


def _version() -> str:
    from .. import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value after an option (`dho fit DIR --unlabeled POOL key=value`) are overrides too
        if not getattr(args, "intermixed", False) or not all("=" in e and not e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    # dho's own notes at INFO; other libraries only warn unless asked (-v)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("dho").setLevel(logging.WARNING if args.quiet else logging.INFO)
    hub = logging.getLogger("huggingface_hub")  # it has a handler of its own: its lines go there, once
    hub.propagate = False
    if args.quiet:
        hub.setLevel(logging.ERROR)
    from ..config import ConfigError
    from ..training.stopping import TrainingInterrupted

    if getattr(args, "checkpoint", None):  # a run directory stands for its checkpoint/
        from ..checkpoint import resolve_checkpoint

        args.checkpoint = str(resolve_checkpoint(args.checkpoint))
    try:
        return args.func(args)
    except BrokenPipeError:  # `dho ... | head`: the reader left; stop quietly, as a killed writer would
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except TrainingInterrupted as err:
        print(f"dho: {err}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt as err:
        print("dho: interrupted", file=sys.stderr)
        return 128 + getattr(err, "signum", signal.SIGINT)  # a second SIGTERM exits as a SIGTERM does
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError, OSError, MemoryError, FloatingPointError) as err:
        if args.traceback:
            raise
        print(f"dho: error: {_describe(err)}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except Exception as err:  # a library's own error type; a full disk under safetensors' SafetensorError
        if args.traceback or not _disk_full(err):
            raise
        print(f"dho: error: {_describe(err)}", file=sys.stderr)
        return 1


def _disk_full(err: BaseException) -> bool:
    """ENOSPC, as an OSError or in the text of another library's error ("os error 28")."""
    if isinstance(err, OSError):
        return err.errno == errno.ENOSPC
    text = str(err).lower()
    return "os error 28" in text or "no space left on device" in text


def _describe(err: BaseException) -> str:
    """One line: the error's first line, with what to do for the failures a user can fix."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, OSError) and err.strerror and err.filename and text.startswith("[Errno"):
        text = f"{err.strerror.lower()}: {err.filename}"  # not "[Errno 2] No such file or directory: 'x'"
    if _disk_full(err):
        where = f" writing {err.filename}" if isinstance(err, OSError) and err.filename else ""
        return (f"no space left on the device{where}; free some space and run again "
                "(an interrupted training run continues with dho train --resume RUN)")
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or any(
            s in text.lower() for s in ("out of memory", "can't allocate memory", "cannot allocate memory")):
        return f"out of memory ({text[:160]}); lower optim.batch_size or eval.batch_size, or set data.in_memory=false"
    return text


if __name__ == "__main__":
    sys.exit(main())
