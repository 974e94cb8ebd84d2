"""Exporting a trained student as one graph: uint8 images in, the heads' mixed probabilities out.

The graph holds the student's normalisation, its backbone, both heads and the mix
p = alpha * softmax(h_CE) + (1 - alpha) * softmax(h_KD / beta) with alpha and beta as constants,
so the deployed model gives the tuned prediction with nothing around it. Input: uint8 RGB
[N, 3, S, S] at the student's input size S (resize and centre-crop first); the batch is dynamic.
After writing, the exported model is run on the given images and compared with PyTorch; a
difference above the tolerance removes the file and raises.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointMeta
from ..mixing import head_probs, mix_probs
from ..students import DualHeadStudent
from .model_card import ExportResult, write_model_card

__all__ = ["EXPORT_FORMATS", "ExportResult", "MixedClassifier", "export_checkpoint", "export_metadata", "export_student",
           "exported_metadata", "images_per_second",
           "load_exported", "run_exported"]

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "torchscript")


class MixedClassifier(nn.Module):
    """The deployable student: uint8 images [N, 3, S, S] -> mixed probabilities [N, C]
    (and, with ``heads=True``, each head's probabilities [N, C] too)."""

    def __init__(self, student: DualHeadStudent, alpha: float | None = None, beta: float | None = None,
                 heads: bool = False) -> None:
        super().__init__()
        self.student = student.eval()
        self.alpha = float(student.alpha if alpha is None else alpha)
        self.beta = float(student.beta if beta is None else beta)
        self.heads = heads

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        out = self.student(images)
        mixed = mix_probs(out.ce_logits, out.kd_logits, self.alpha, self.beta)
        return (mixed, *head_probs(out.ce_logits, out.kd_logits, self.beta)) if self.heads else mixed


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise RuntimeError(f"ONNX export needs onnx, onnxscript and onnxruntime ({err.name} is missing): "
                           "pip install 'dho[export]'") from None


def _export_onnx(model: MixedClassifier, example: Tensor, path: Path, metadata: dict[str, str]) -> None:
    _require_onnx()
    outputs = ["probs", "ce_probs", "kd_probs"] if model.heads else ["probs"]
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    quiet = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]  # one INFO line per graph rewrite
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(logging.WARNING)
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"], output_names=outputs,
                                    dynamic_shapes=({0: batch},), external_data=False, verbose=False)
        assert program is not None  # the dynamo exporter returns the program it built
        program.save(str(path))
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    import onnx

    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, metadata)  # read back by onnxruntime's get_modelmeta().custom_metadata_map
    onnx.save(graph, str(path))


def _export_torchscript(model: MixedClassifier, example: Tensor, path: Path, metadata: dict[str, str]) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing is deprecated upstream, and the input size is meant to be fixed
        traced = torch.jit.trace(model, (example,), check_trace=False)
    traced.save(str(path), _extra_files={f"{key}.txt": value for key, value in metadata.items()})


def export_metadata(classes: list[str], student: DualHeadStudent, alpha: float, beta: float, heads: bool) -> dict[str, str]:
    """What an exported file says about itself (strings, as ONNX metadata and TorchScript extra
    files hold them): ``class_names`` (a JSON list, in output order), the input it takes, the mix."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        producer = f"dho {version('dho')}"
    except PackageNotFoundError:  # a source tree without an install
        producer = "dho"
    size = student.preprocess.size
    return {"class_names": json.dumps(list(classes)), "input": f"uint8 RGB [N, 3, {size}, {size}]",
            "outputs": "probs, ce_probs, kd_probs" if heads else "probs", "alpha": f"{alpha:g}", "beta": f"{beta:g}",
            "producer": producer}


def exported_metadata(path: str | Path) -> dict[str, str]:
    """The metadata an export carries (:func:`export_metadata`), read back from the file."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return dict(session.get_modelmeta().custom_metadata_map)
    keys = ("class_names", "input", "outputs", "alpha", "beta", "producer")
    files: dict[str, Any] = {f"{key}.txt": "" for key in keys}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    text = {key: files[f"{key}.txt"] for key in keys}
    return {key: value.decode() if isinstance(value, bytes) else str(value) for key, value in text.items() if value}


def load_exported(path: str | Path) -> Callable[[Tensor], Tensor]:
    """A callable: uint8 images [N, 3, S, S] (CPU) -> mixed probabilities [N, C], for a written export."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def run(images: Tensor) -> Tensor:
        out = module(images)
        return out[0] if isinstance(out, tuple) else out
    return run


def run_exported(path: str | Path, images: Tensor) -> Tensor:
    """The exported model's mixed probabilities [N, C] for uint8 images [N, 3, S, S] (CPU)."""
    return load_exported(path)(images)


def images_per_second(fn: Callable[[Tensor], Any], images: Tensor, rounds: int = 5) -> float:
    """Median throughput of ``fn(images)`` over ``rounds`` calls after one warm-up call."""
    fn(images)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - start)
    return len(images) / sorted(times)[len(times) // 2]


@torch.no_grad()
def export_student(student: DualHeadStudent, out: str | Path, fmt: str, check_images: Tensor, *,
                   alpha: float | None = None, beta: float | None = None, heads: bool = False,
                   atol: float = 1e-4, classes: list[str] | None = None) -> ExportResult:
    """Write ``student`` as ``fmt`` to ``out`` and verify it on ``check_images`` (uint8 [N, 3, S, S]).

    The graph is written beside ``out`` under a temporary name and moved onto ``out`` only once it
    passed the parity check: a stop mid-write or a failed check leaves any earlier file at ``out``
    as it was. ``classes`` (default: the student's) go into the file's metadata."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    size = student.preprocess.size
    if check_images.dtype != torch.uint8 or tuple(check_images.shape[1:]) != (3, size, size):
        raise ValueError(f"check images must be uint8 [N, 3, {size}, {size}], got {check_images.dtype} {tuple(check_images.shape)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = MixedClassifier(student.cpu().float(), alpha, beta, heads).eval()
    example = check_images[: min(2, len(check_images))]
    names = list(classes) if classes is not None else list(student.classnames)
    metadata = export_metadata(names, student, model.alpha, model.beta, heads)
    partial = out.with_name(f".{out.stem}.{os.getpid()}.partial{out.suffix}")  # same folder: the final rename is atomic
    try:
        started = time.time()
        (_export_onnx if fmt == "onnx" else _export_torchscript)(model, example, partial, metadata)
        log.info("exported %s in %.1f s", out, time.time() - started)
        reference = model(check_images)
        reference = reference[0] if isinstance(reference, tuple) else reference
        diff = float((run_exported(partial, check_images).float() - reference).abs().max())
        if not diff <= atol:
            kept = f"; {out} was left as it was" if out.exists() else ""
            raise RuntimeError(f"exported {fmt} model differs from PyTorch by {diff:.3g} (> {atol:g}) on "
                               f"{len(check_images)} images; not written{kept}")
        partial.chmod(0o644)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return ExportResult(out, fmt, diff, len(check_images), out.stat().st_size)


def _check_images(checkpoint: str | Path, meta: CheckpointMeta, size: int, paths: list[str] | None, split: str, count: int) -> Tensor:
    """uint8 [N, 3, S, S] real images to verify an export on: given files, else the run's split."""
    from ..data import EvalViews, ImageStore
    from ..data.images import decode_image, eval_view
    from .predict import expand_paths
    from .scoring import checkpoint_split

    if paths:
        files = expand_paths(paths)[:count]
        return torch.stack([eval_view(decode_image(f), size) for f in files])
    manifest, items = checkpoint_split(checkpoint, meta, split, None)
    views = EvalViews(ImageStore(manifest, items[:count], in_memory=False), size)
    return torch.stack([views[i][0] for i in range(len(views))])


def _teacher_speed(meta: CheckpointMeta, images: Tensor) -> tuple[float | str, str]:
    """The teacher's images/s on these images (rebuilt from the run's config), or why not."""
    from ..config import RunConfig
    from ..teachers import build_teacher

    try:
        run_cfg = RunConfig.from_dict(meta["config"])
        teacher = build_teacher(run_cfg.teacher, meta["classes"], run_cfg.data.dataset)
    except Exception as err:  # e.g. hub weights that are not on this machine
        return f"{type(err).__name__}: {str(err).splitlines()[0][:80]}", "-"
    params = sum(p.numel() for p in teacher.parameters())
    return images_per_second(teacher, images, rounds=3), f"{params / 1e6:.2f}M"


MODEL_SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


def export_path(checkpoint: str | Path, out: str | Path | None, fmt: str) -> Path:
    """Where ``dho export`` writes: ``out`` when it names a model file (``.onnx``, ``.pt``), else
    ``model.onnx`` / ``model.pt`` in the directory ``out`` (default: the run's ``export/``)."""
    from ..checkpoint import resolve_checkpoint

    if out is None:
        ckpt = resolve_checkpoint(checkpoint)
        out = (ckpt if ckpt.is_dir() else ckpt.parent).parent / "export"
    out = Path(out)
    if out.suffix in MODEL_SUFFIXES.values() and not out.is_dir():
        return out
    return out / f"model{MODEL_SUFFIXES[fmt]}"


def export_checkpoint(checkpoint: str | Path, out: str | Path | None, fmt: str, *, images: list[str] | None = None,
                      split: str = "test", count: int = 64, alpha: float | None = None, beta: float | None = None,
                      heads: bool = False, atol: float = 1e-4, card: bool = True, teacher_speed: bool = True) -> dict:
    """``dho export``: write the student of ``checkpoint`` as one graph, verify it on real images,
    measure it (and its teacher) on this machine, and write the model card beside it."""
    from ..checkpoint import load_metadata, load_student

    meta = load_metadata(checkpoint)
    student = load_student(checkpoint)
    size = student.preprocess.size
    out = export_path(checkpoint, out, fmt)
    try:
        check = _check_images(checkpoint, meta, size, images, split, count)
    except ValueError as err:
        if images or split != "test" or "is empty" not in str(err):
            raise
        log.info("this run has no test split: the export is checked on validation images")
        check = _check_images(checkpoint, meta, size, images, "val", count)
    result = export_student(student, out, fmt, check, alpha=alpha, beta=beta, heads=heads, atol=atol,
                            classes=list(meta["classes"]))
    speed: dict[str, float | str] = {"student": images_per_second(load_exported(result.path), check)}
    if teacher_speed:
        speed["teacher"], speed["teacher_params"] = _teacher_speed(meta, check)
    else:
        speed["teacher"] = "skipped"
    report: dict[str, Any] = {"path": str(result.path), "format": fmt, "bytes": result.bytes, "max_abs_diff": result.max_abs_diff,
              "images_checked": result.images_checked, "params": sum(p.numel() for p in student.parameters()),
              "alpha": student.alpha if alpha is None else alpha, "beta": student.beta if beta is None else beta,
              "images_per_s": speed}
    if card:
        import platform

        threads = torch.get_num_threads()
        machine = f"{platform.machine()} CPU, {threads} torch thread{'s' if threads > 1 else ''}"
        report["card"] = str(write_model_card(result.path.with_suffix(".md"), checkpoint, meta, result,
                                              alpha=report["alpha"], beta=report["beta"], heads=heads, atol=atol,
                                              params=report["params"], speed=speed, machine=machine))
    return report
