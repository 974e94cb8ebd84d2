"""Quality of a frozen student's features: linear evaluation and t-SNE maps.

The linear-evaluation protocol freezes the backbone, standardises its features z with the
training mean/std, and fits a fresh multinomial logistic regression (full-batch L-BFGS, L2
penalty) on fully labeled training data; test top-1/top-5 measure how linearly separable the
classes are in feature space, independently of the two trained heads.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import load_student
from ..data import EvalViews, ImageStore, SplitManifest
from ..data.manifest import UNLABELED
from ..files import write_text_atomic
from ..progress import progress as progress_bar
from ..students import DualHeadStudent

__all__ = ["extract_features", "linear_eval", "linear_eval_run", "tsne_plot", "tsne_run"]

log = logging.getLogger(__name__)

WEIGHT_DECAY_GRID = tuple(10.0 ** (-k / 2) for k in range(7))  # 1 down to 1e-3 in half decades


@torch.no_grad()
def extract_features(student: DualHeadStudent, views: Dataset, batch_size: int = 256,
                     device: str | torch.device = "cpu", progress: bool = False) -> tuple[Tensor, Tensor]:
    """Backbone features of eval views [(uint8 image [3, S, S], label)].

    Returns (features [N, d] float32 on the CPU, labels [N] long). The student runs in eval mode
    (BatchNorm running statistics, no dropout) and its training mode is restored afterwards.
    """
    was_training = student.training
    student.eval()
    feats, labels = [], []
    loader = DataLoader(views, batch_size=batch_size, shuffle=False)
    try:
        for images, y in progress_bar(loader, desc="features", enabled=progress, leave=False):
            z = student.backbone(student.preprocess(images.to(device, non_blocking=True)))
            feats.append(z.float().flatten(1).cpu())
            labels.append(torch.as_tensor(y, dtype=torch.long))
    finally:
        student.train(was_training)
    if not feats:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def _standardise(train: Tensor, test: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Both [N, d] feature sets shifted and scaled by the training mean/std (constant dims stay 0)."""
    mean = train.mean(0, keepdim=True)
    std = train.std(0, unbiased=False, keepdim=True).clamp_min(eps)
    return (train - mean) / std, (test - mean) / std


def _topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of rows of logits [N, C] whose true label is among the k largest."""
    if len(labels) == 0:
        return float("nan")
    hits = (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1)
    return float(hits.double().mean())


def _fit_linear(x: Tensor, y: Tensor, num_classes: int, epochs: int, lr: float, weight_decay: float,
                seed: int) -> torch.nn.Linear:
    """Multinomial logistic regression on x [N, d], y [N]: minimise mean CE + wd/2 * ||W||^2
    (bias unpenalised) with full-batch L-BFGS for at most ``epochs`` iterations."""
    gen = torch.Generator().manual_seed(seed)
    clf = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        clf.weight.copy_(torch.randn(clf.weight.shape, generator=gen) * 0.01)
        clf.bias.zero_()
    opt = torch.optim.LBFGS(clf.parameters(), lr=lr, max_iter=epochs, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(clf(x), y) + 0.5 * weight_decay * clf.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return clf


def _holdout_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded stratified split of labels [N] into (fit, held-out) index tensors: each class with
    at least two items gives round(n * fraction) of them (at least one) to the held-out part."""
    gen = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for c in labels.unique():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        n = min(len(members) - 1, max(1, round(len(members) * fraction))) if len(members) > 1 else 0
        held.append(members[:n])
        fit.append(members[n:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


def _select_weight_decay(x: Tensor, y: Tensor, num_classes: int, epochs: int, lr: float, seed: int,
                         holdout: float = 0.2) -> tuple[float, dict[str, float]]:
    """The L2 strength of ``WEIGHT_DECAY_GRID`` with the lowest cross-entropy on a stratified
    held-out part of the standardised training features x [N, d] (less noisy than held-out
    accuracy on small sets). The grid runs from strong to weak and stops two points past the
    minimum, as weak penalties are the slow fits. Returns (weight decay, {weight decay: loss})."""
    fit, held = _holdout_split(y, holdout, seed)
    if len(held) == 0:
        log.warning("too few training features to select weight decay; using %g", WEIGHT_DECAY_GRID[2])
        return WEIGHT_DECAY_GRID[2], {}
    losses: dict[str, float] = {}
    best, best_wd, worse = math.inf, WEIGHT_DECAY_GRID[0], 0
    for wd in WEIGHT_DECAY_GRID:
        clf = _fit_linear(x[fit], y[fit], num_classes, epochs, lr, wd, seed)
        with torch.no_grad():
            loss = float(F.cross_entropy(clf(x[held]), y[held]))
        losses[f"{wd:.3g}"] = round(loss, 6)
        best, best_wd, worse = (loss, wd, 0) if loss < best else (best, best_wd, worse + 1)
        if worse == 2:
            break
    log.info("weight decay %.3g selected on %d held-out features (loss %.4f)", best_wd, len(held), best)
    return best_wd, losses


def linear_eval(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                num_classes: int, epochs: int = 100, lr: float = 1.0, weight_decay: float | None = None,
                seed: int = 0) -> dict:
    """Linear evaluation of frozen features: train [N, d] / [N], test [M, d] / [M].

    Standardises with the training statistics and fits a linear classifier (``_fit_linear``;
    ``epochs`` = L-BFGS iterations, ``weight_decay`` = L2 strength on the mean loss). With
    ``weight_decay=None`` the strength is chosen from ``WEIGHT_DECAY_GRID`` by the loss on a
    held-out 20% of the training features, then the classifier is refit on all of them.
    Reports fractions in [0, 1]: ``top1``, ``top5`` (top-k with k = ``top5_k`` = min(5, C)),
    ``train_top1``; counts ``n_train``, ``n_test``, ``num_classes``, ``dim``; the settings used
    (``weight_decay`` as chosen) and ``held_out_loss`` per tried weight decay.
    Deterministic for a given ``seed`` (which draws the initial weights and the held-out part).
    """
    if len(train_labels) == 0:
        raise ValueError("linear_eval needs at least one training feature")
    x_train, x_test = _standardise(train_features.double(), test_features.double())
    x_train, x_test = x_train.float(), x_test.float()
    y_train, y_test = train_labels.long(), test_labels.long()
    held_out_loss: dict[str, float] = {}
    if weight_decay is None:
        weight_decay, held_out_loss = _select_weight_decay(x_train, y_train, num_classes, epochs, lr, seed)
    clf = _fit_linear(x_train, y_train, num_classes, epochs, lr, weight_decay, seed)
    k = min(5, num_classes)
    with torch.no_grad():
        train_logits, test_logits = clf(x_train), clf(x_test)
    out = {
        "top1": _topk_accuracy(test_logits, y_test, 1), "top5": _topk_accuracy(test_logits, y_test, k),
        "top5_k": k, "train_top1": _topk_accuracy(train_logits, y_train, 1),
        "n_train": len(y_train), "n_test": len(y_test), "num_classes": num_classes, "dim": x_train.shape[1],
        "epochs": epochs, "weight_decay": weight_decay, "held_out_loss": held_out_loss, "seed": seed,
    }
    log.info("linear eval on %d x %d features: top1 %.4f, top%d %.4f (train %.4f)",
             out["n_train"], out["dim"], out["top1"], k, out["top5"], out["train_top1"])
    return out


def _run_paths(path: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint directory) from either of the two."""
    path = Path(path)
    if (path / "model.json").is_file():
        return path.parent, path
    return path, path / "checkpoint"


def _load_run(path: str | Path, data_root: str | Path | None,
              device: str | torch.device) -> tuple[Path, DualHeadStudent, SplitManifest]:
    """The run directory, its trained student and its split manifest (optionally re-rooted)."""
    run_dir, ckpt = _run_paths(path)
    splits = run_dir / "splits.json"
    if not splits.is_file():
        raise FileNotFoundError(f"no splits.json in the run directory {str(run_dir)!r}")
    student = load_student(ckpt, device=device)
    manifest = SplitManifest.load(splits)
    if manifest.classes != student.classnames:
        raise ValueError(f"class list of {splits} differs from the checkpoint's")
    if data_root is not None:
        manifest.root = str(Path(data_root).resolve())
    return run_dir, student, manifest


def _split_features(student: DualHeadStudent, manifest: SplitManifest, split: str, batch_size: int,
                    device: str | torch.device, progress: bool) -> tuple[Tensor, Tensor]:
    """Features [N, d] and true labels [N] of a split ("test", or names joined by "+")."""
    items = [item for name in split.split("+") for item in manifest.split(name.strip())]
    unknown = sum(y == UNLABELED for _, y in items)
    if unknown:  # images of data.unlabeled: nobody knows their class
        log.info("%s: leaving out %d images without a known class (data.unlabeled)", split, unknown)
        items = [it for it in items if it[1] != UNLABELED]
    if not items:
        raise ValueError(f"split {split!r} of this run has no images with a known class")
    views = EvalViews(ImageStore(manifest, items, in_memory=False), student.preprocess.size)
    return extract_features(student, views, batch_size=batch_size, device=device, progress=progress)


def linear_eval_run(run_dir: str | Path, data_root: str | Path | None = None,
                    train_split: str = "labeled+unlabeled", batch_size: int = 256, progress: bool = False,
                    *, test_split: str = "test", device: str | torch.device = "cpu", **linear_kw: Any) -> dict:
    """Linear evaluation of a trained run's frozen backbone on fully labeled data.

    ``run_dir`` is a run directory or its ``checkpoint`` directory. Training features come from
    ``train_split`` of the run's splits.json with every image's true label (labeled and unlabeled
    alike); the test split is scored. ``data_root`` re-roots the manifest when the dataset moved;
    ``linear_kw`` goes to :func:`linear_eval`. Writes ``<run_dir>/linear_eval.json``.
    """
    run, student, manifest = _load_run(run_dir, data_root, device)
    x_train, y_train = _split_features(student, manifest, train_split, batch_size, device, progress)
    x_test, y_test = _split_features(student, manifest, test_split, batch_size, device, progress)
    result = linear_eval(x_train, y_train, x_test, y_test, len(manifest.classes), **linear_kw)
    result = {**result, "train_split": train_split, "test_split": test_split,
              "backbone": student.spec.backbone, "input_size": student.preprocess.size}
    write_text_atomic(run / "linear_eval.json", json.dumps(result, indent=1))
    return result


def _balanced_subsample(labels: Tensor, max_points: int, seed: int = 0) -> Tensor:
    """Sorted indices [<= max_points] of a seeded class-balanced subsample of labels [N]: classes
    take turns, each in a random order, so small classes are kept whole and large ones cut."""
    if len(labels) <= max_points:
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    rank = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique():
        members = order[labels[order] == c]  # this class's indices in random order
        rank[members] = torch.arange(len(members))
    # stable sort of the random order by within-class rank interleaves the classes
    pick = order[torch.sort(rank[order], stable=True).indices[:max_points]]
    return pick.sort().values


def _colours(num_classes: int) -> list:
    from matplotlib import colormaps

    name = "tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo"
    cmap = colormaps[name]
    if name == "turbo":
        return [cmap(i / max(1, num_classes - 1)) for i in range(num_classes)]
    return [cmap(i) for i in range(num_classes)]


def _embed_2d(features: Tensor, seed: int) -> np.ndarray:
    """t-SNE of features [n, d] -> coordinates [n, 2] (PCA init, perplexity scaled to n)."""
    from sklearn.manifold import TSNE

    n = len(features)
    perplexity = max(1.0, min(30.0, (n - 1) / 3))
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
    return tsne.fit_transform(features.detach().double().cpu().numpy())


def tsne_plot(features: Tensor, labels: Tensor, classnames: list[str], path: str | Path,
              max_points: int = 2000, seed: int = 0, title: str | None = None) -> Path:
    """Scatter plot of a 2-D t-SNE of features [N, d], coloured by labels [N], saved as a PNG.

    At most ``max_points`` points, drawn class-balanced with ``seed`` (which also seeds t-SNE).
    Returns ``path``.
    """
    from matplotlib.figure import Figure

    if len(labels) < 2:
        raise ValueError("t-SNE needs at least two points")
    keep = _balanced_subsample(labels, max_points, seed)
    xy = _embed_2d(features[keep], seed)
    y = labels[keep].cpu().numpy()
    colours = _colours(len(classnames))
    fig = Figure(figsize=(7.5, 6), dpi=120)
    ax = fig.add_subplot()
    for c, name in enumerate(classnames):
        mask = y == c
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=8, color=colours[c], label=name, alpha=0.8, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(keep)} features, {len(set(y.tolist()))} classes")
    if len(classnames) <= 40:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, markerscale=2,
                  frameon=False, ncol=1 if len(classnames) <= 20 else 2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    log.info("t-SNE of %d points written to %s", len(keep), path)
    return path


def tsne_run(run_dir: str | Path, path: str | Path | None = None, split: str = "test", max_points: int = 2000,
             *, data_root: str | Path | None = None, batch_size: int = 256, device: str | torch.device = "cpu",
             progress: bool = False, seed: int = 0) -> Path:
    """t-SNE of a trained run's backbone features on one of its splits (names may be joined by
    "+"); written to ``<run_dir>/tsne_<split>.png`` unless ``path`` is given. Returns the path."""
    run, student, manifest = _load_run(run_dir, data_root, device)
    feats, labels = _split_features(student, manifest, split, batch_size, device, progress)
    path = run / f"tsne_{split.replace('+', '_')}.png" if path is None else Path(path)
    title = f"t-SNE of {student.spec.backbone} features ({split} split)"
    return tsne_plot(feats, labels, manifest.classes, path, max_points=max_points, seed=seed, title=title)
