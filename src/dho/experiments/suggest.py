"""Which images to label next (``dho suggest RUN --unlabeled POOL --n N``).

A DHO student carries its own uncertainty signal: its two heads, and its teacher, disagree where
labels would help most. Each unlabeled image is scored

    score = JS(p_CE, p_KD) + JS(p_mix, p_teacher) + (1 - margin(p_mix))

(Jensen-Shannon divergences in nats, margin = top-1 minus top-2 probability of the mixed
prediction), then picked best-first class by class (round-robin over the predicted classes, so
the N images spread over the classes the model thinks they are), skipping any image whose student
features are within cosine ``dedup`` of one already picked (near-duplicates teach nothing new) and
every image the run was already trained on as labeled. Out: ``suggestions.csv`` (path, predicted
class, score, rank) and ``suggestions.png``, a contact sheet of the picks.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..files import write_csv_atomic

__all__ = ["Suggestion", "disagreement_scores", "pick_balanced", "suggest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Suggestion:
    path: str
    predicted: str
    score: float


def _js(p: Tensor, q: Tensor) -> Tensor:
    m = 0.5 * (p + q)

    def kl(a: Tensor) -> Tensor:
        return (a * (a.clamp_min(1e-12).log() - m.clamp_min(1e-12).log())).sum(-1)
    return 0.5 * (kl(p) + kl(q))


def disagreement_scores(p_ce: Tensor, p_kd: Tensor, p_mix: Tensor, p_teacher: Tensor | None) -> Tensor:
    """[N] scores of the module's formula (higher: label it sooner)."""
    top = p_mix.topk(2, dim=-1).values
    score = _js(p_ce, p_kd) + (1.0 - (top[:, 0] - top[:, 1]))
    return score + _js(p_mix, p_teacher) if p_teacher is not None else score


def pick_balanced(scores: Tensor, predicted: Tensor, features: Tensor, n: int, dedup: float = 0.95) -> list[int]:
    """Indices of ``n`` images: best score first within each predicted class, classes in turn,
    none within cosine ``dedup`` of an earlier pick."""
    queues: dict[int, list[int]] = defaultdict(list)
    for i in scores.argsort(descending=True).tolist():
        queues[int(predicted[i])].append(i)
    order = sorted(queues, key=lambda c: -float(scores[queues[c][0]]))
    feats = torch.nn.functional.normalize(features.float(), dim=-1)
    picked: list[int] = []
    while len(picked) < n and any(queues.values()):
        for c in order:
            while queues[c] and len(picked) < n:
                i = queues[c].pop(0)
                if picked and float((feats[picked] @ feats[i]).max()) > dedup:
                    continue
                picked.append(i)
                break
    return picked


class _Pool(Dataset):
    """(student view, teacher view) centre crops of each pool image."""

    def __init__(self, paths: list[Path], sizes: tuple[int, int]) -> None:
        self.paths, self.sizes = paths, sizes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from ..data.images import decode_image, eval_view

        image = decode_image(self.paths[i])
        return eval_view(image, self.sizes[0]), eval_view(image, self.sizes[1])


@torch.no_grad()
def _pool_outputs(run: Path, paths: list[Path], batch_size: int, progress: bool) -> dict[str, Tensor]:
    from ..checkpoint import load_metadata, load_student, resolve_checkpoint
    from ..config import RunConfig
    from ..mixing import head_probs, mix_probs
    from ..progress import progress as progress_bar
    from ..ship.scoring import run_teacher
    from ..teachers import build_teacher

    checkpoint = resolve_checkpoint(run)
    meta, student = load_metadata(checkpoint), load_student(checkpoint).eval()
    run_cfg = RunConfig.from_dict(meta["config"])
    teacher = run_teacher(checkpoint, meta, run_cfg, build_teacher(run_cfg.teacher, meta["classes"], run_cfg.data.dataset))
    loader = DataLoader(_Pool(paths, (student.preprocess.size, teacher.image_size)), batch_size=batch_size)
    out: dict[str, list[Tensor]] = defaultdict(list)
    for images, teacher_images in progress_bar(loader, desc="suggest", enabled=progress):
        heads = student(images)
        p_ce, p_kd = head_probs(heads.ce_logits, heads.kd_logits, student.beta)
        out["ce"].append(p_ce)
        out["kd"].append(p_kd)
        out["mix"].append(mix_probs(heads.ce_logits, heads.kd_logits, student.alpha, student.beta))
        out["teacher"].append(teacher(teacher_images).logits.float().softmax(-1))
        out["features"].append(heads.features.float())
    return {k: torch.cat(v) for k, v in out.items()}


def _labeled_paths(run: Path) -> set[Path]:
    from ..checkpoint import resolve_checkpoint
    from ..data.manifest import SplitManifest

    ckpt = resolve_checkpoint(run)
    splits = (ckpt if ckpt.is_dir() else ckpt.parent).parent / "splits.json"
    if not splits.is_file():
        return set()
    manifest = SplitManifest.load(splits)
    return {Path(manifest.path(p)).resolve() for p, _ in manifest.labeled}


def suggest(run: str | Path, unlabeled: str | Path, n: int, out: str | Path, *, dedup: float = 0.95,
            batch_size: int = 64, progress: bool = False) -> list[Suggestion]:
    """Rank ``unlabeled`` (a folder, list file or glob) for labeling by the run's student and
    teacher; write ``out/suggestions.csv`` and ``out/suggestions.png``; return the picks in order."""
    from ..data.folders import unlabeled_images

    run, out = Path(run), Path(out)
    seen = _labeled_paths(run)
    paths = [p for p in unlabeled_images(unlabeled) if p.resolve() not in seen]
    if not paths:
        raise ValueError(f"no image of {unlabeled} is left to suggest (none found, or all already labeled)")
    outputs = _pool_outputs(run, paths, batch_size, progress)
    scores = disagreement_scores(outputs["ce"], outputs["kd"], outputs["mix"], outputs["teacher"])
    predicted = outputs["mix"].argmax(-1)
    picked = pick_balanced(scores, predicted, outputs["features"], min(n, len(paths)), dedup)
    from ..checkpoint import load_metadata, resolve_checkpoint

    classes = load_metadata(resolve_checkpoint(run))["classes"]
    picks = [Suggestion(str(paths[i]), classes[int(predicted[i])], float(scores[i])) for i in picked]
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out / "suggestions.csv", ["rank", "path", "predicted", "score"],
                     ({"rank": r, "path": s.path, "predicted": s.predicted, "score": f"{s.score:.4f}"}
                      for r, s in enumerate(picks, 1)))
    _contact_sheet(picks, out / "suggestions.png")
    log.info("suggest: %d of %d pool images picked (%d classes predicted among them)", len(picks), len(paths),
             len({s.predicted for s in picks}))
    return picks


def _contact_sheet(picks: list[Suggestion], path: Path, limit: int = 64, thumb: int = 96) -> None:
    """Thumbnails of the first ``limit`` picks, each with its rank and predicted class."""
    from PIL import Image, ImageDraw

    shown = picks[:limit]
    cols = min(8, max(1, len(shown)))
    rows = (len(shown) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, pick in enumerate(shown):
        with Image.open(pick.path) as opened:
            small = opened.convert("RGB")
        small.thumbnail((thumb, thumb))
        x, y = (k % cols) * thumb, (k // cols) * (thumb + 14)
        sheet.paste(small, (x + (thumb - small.width) // 2, y + (thumb - small.height) // 2))
        draw.text((x + 2, y + thumb), f"{k + 1} {pick.predicted}"[:16], fill="black")
    sheet.save(path)
