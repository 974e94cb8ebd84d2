"""The model card written next to every exported student: what it is, how it was made, how good
and how fast it is, and how to run it."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import CheckpointMeta
from ..files import write_text_atomic

__all__ = ["ExportResult", "checkpoint_scores", "write_model_card"]


@dataclass
class ExportResult:
    """An exported graph: where it is, its format, and its parity with the PyTorch student."""

    path: Path
    format: str
    max_abs_diff: float  # exported vs PyTorch on the check images
    images_checked: int
    bytes: int


def checkpoint_scores(checkpoint: str | Path, meta: CheckpointMeta) -> dict:
    """Validation and test scores of the run: from the checkpoint, else from the run's results.json."""
    if "scores" in meta:
        return meta["scores"]
    ckpt = Path(checkpoint)
    results = (ckpt if ckpt.is_dir() else ckpt.parent).parent / "results.json"
    if results.is_file():
        data = json.loads(results.read_text())
        return {"val": data.get("val", {}), "test": data.get("test", {})}
    return {}


def _split_counts(checkpoint: str | Path) -> dict:
    """How many images each split of the run had (from its splits.json), or {} without one."""
    ckpt = Path(checkpoint)
    path = (ckpt if ckpt.is_dir() else ckpt.parent).parent / "splits.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {k: len(data.get(k) or []) for k in ("labeled", "unlabeled", "val", "test")}


def _pct(value: float | None) -> str:
    return f"{100 * value:.2f}" if isinstance(value, float) else "-"


def _accuracy_rows(scores: dict) -> list[str]:
    rows = []
    for split in ("val", "test"):
        s = scores.get(split) or {}
        if s:
            rows.append(f"| {split} ({s.get('n', '?')} images) | {_pct(s.get('mixed'))} | {_pct(s.get('ce_head'))} | "
                        f"{_pct(s.get('kd_head'))} | {_pct(s.get('teacher'))} |")
    return rows


def write_model_card(path: str | Path, checkpoint: str | Path, meta: CheckpointMeta, result: ExportResult, *,
                     alpha: float, beta: float, heads: bool, atol: float, params: int, speed: dict,
                     machine: str) -> Path:
    """Write the markdown card. ``speed``: {"student": images/s, "teacher": images/s or a reason}."""
    arch, size, classes = meta["architecture"], meta["input_size"], meta["classes"]
    outputs = "`probs`, `ce_probs`, `kd_probs` (each head's softmax, h_KD at beta)" if heads else "`probs`"
    teacher_speed = speed.get("teacher")
    teacher_speed = f"{teacher_speed:.1f}" if isinstance(teacher_speed, float) else f"not measured ({teacher_speed})"
    lines = [
        f"# {arch['backbone']} student for {len(classes)} classes (Dual-Head Optimization)",
        "",
        f"`{result.path.name}` ({result.format}) was exported by dho from `{checkpoint}` on "
        f"{datetime.date.today().isoformat()}.",
        "",
        "## Use",
        "",
        f"- Input `images`: uint8 RGB, [N, 3, {size}, {size}], any N. Resize the shorter side to {size} px and "
        f"centre-crop {size} x {size}; the normalisation (mean {[round(m, 4) for m in arch['mean']]}, "
        f"std {[round(s, 4) for s in arch['std']]}) is inside the graph.",
        f"- Output {outputs}: [N, {len(classes)}] probabilities p = alpha * softmax(h_CE) + (1 - alpha) * "
        f"softmax(h_KD / beta), with alpha = {alpha:g} and beta = {beta:g} built in; argmax is the prediction.",
        "",
        "```python",
        _run_snippet(result, size),
        "```",
        "",
        "## Classes",
        "",
        ", ".join(f"{i}: {name}" for i, name in enumerate(classes)),
        "",
        *_training_lines(checkpoint, meta, alpha, beta),
        "",
        "## Accuracy (%)",
        "",
        "| split | mixed | h_CE | h_KD | teacher |",
        "|---|---:|---:|---:|---:|",
        *(_accuracy_rows(checkpoint_scores(checkpoint, meta)) or ["| - | - | - | - | - |"]),
        "",
        f"## Size and speed ({machine})",
        "",
        "| model | parameters | file | images/s (batch of the check images) |",
        "|---|---:|---:|---:|",
        f"| student, exported | {params / 1e6:.2f}M | {result.bytes / 1e6:.1f} MB | {speed['student']:.1f} |",
        f"| teacher, PyTorch | {speed.get('teacher_params', '-')} | - | {teacher_speed} |",
        "",
        "## Parity",
        "",
        f"max |exported - PyTorch| = {result.max_abs_diff:.2e} on {result.images_checked} images "
        f"(tolerance {atol:g}).",
        "",
    ]
    return write_text_atomic(path, "\n".join(lines))


def _run_snippet(result: ExportResult, size: int) -> str:
    """How to run the exported file, in Python."""
    if result.format == "onnx":
        return ("import onnxruntime as ort\n"
                f"session = ort.InferenceSession(\"{result.path.name}\")\n"
                f"probs = session.run(None, {{\"images\": images}})[0]  # images: uint8 numpy [N, 3, {size}, {size}]")
    return ("import torch\n"
            f"model = torch.jit.load(\"{result.path.name}\")\n"
            f"probs = model(images)  # images: uint8 tensor [N, 3, {size}, {size}]")


def _training_lines(checkpoint: str | Path, meta: CheckpointMeta, alpha: float, beta: float) -> list[str]:
    """The card's "How it was trained": teacher, student, method, data, and how alpha/beta were chosen."""
    arch, cfg, size = meta["architecture"], meta.get("config", {}), meta["input_size"]
    split, mixing = {**meta.get("split", {}), **_split_counts(checkpoint)}, meta.get("mixing", {})
    data, student_cfg, loss = cfg.get("data", {}), cfg.get("student", {}), cfg.get("loss", {})
    teacher = meta.get("teacher", {})
    labeled_share = f"{data.get('shots')} per class" if data.get("shots") else f"fraction {data.get('fraction')}"
    selection = mixing.get("selection", "unknown")
    if "val_mixed" in mixing:
        selection += f", validation accuracy {_pct(mixing['val_mixed'])}%"
    return [
        "## How it was trained",
        "",
        f"- Teacher: `{teacher.get('id', 'unknown')}` at {teacher.get('size', '?')} px, zero-shot head over "
        f"{len(teacher.get('templates', []))} prompt template(s), zeta {teacher.get('zeta', '?')}.",
        f"- Student: `{arch['backbone']}` ({arch.get('source', '?')}), "
        f"{'ImageNet-pretrained' if student_cfg.get('pretrained') else 'initialised as configured'}, "
        f"{arch['num_features']}-d features, heads h_CE = {arch['ce_head']}, h_KD = {arch['kd_head']}, "
        f"input {size} px.",
        f"- Method: `{loss.get('method', 'dho')}` (CE weight {loss.get('ce_weight', '?')}, KD weight "
        f"{loss.get('kd_weight', '?')}, temperature {loss.get('temperature', '?')}).",
        f"- Data: `{data.get('root', '?')}`; {split.get('labeled', '?')} labeled "
        f"({labeled_share}), "
        f"{split.get('unlabeled', '?')} unlabeled, {split.get('val', '?')} validation, {split.get('test', '?')} test "
        f"images (validation {split.get('val_source', '?')}, test {split.get('test_source', '?')}); "
        f"split seed {data.get('split_seed', '?')}.",
        f"- alpha = {alpha:g}, beta = {beta:g}: {selection}.",
    ]
