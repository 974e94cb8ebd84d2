"""Few-shot teacher heads: Tip-Adapter and Tip-Adapter-F (METHOD.md 2).

A cache model over a frozen teacher's L2-normalised image features of the labeled shots:

    logits = zero_shot_logits + a * exp(-b * (1 - f @ keys.T)) @ values

keys [N, D] are the shots' features, values [N, C] their one-hot labels; (a, b) are searched on
validation. Tip-Adapter-F also fine-tunes the keys on features of augmented views of the shots.
Everything here works on tensors of teacher outputs, so it runs on cached outputs of any teacher
whose features are L2-normalised (CLIP logits are 100 * cos; other teachers give log-probs).

Three choices are arguments, each with Tip-Adapter's way (gaopengcuhk/Tip-Adapter) as one option:
``key_mean`` (how the views of a shot become its key), ``train_views`` (a fresh augmented view of
every shot each fine-tuning epoch, or the same views every epoch) and ``grid`` (their (a, b)
search grid and initial (a, b), in units of CLIP's 100 * cos logits, or ours, scaled to the
zero-shot logits' spread).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "A_STEPS", "DEFAULT_B_GRID", "TIP_HYPERPARAMETERS", "TipAdapter", "build_cache", "cache_logits", "default_a_grid",
    "fine_tune_keys", "fit_tip_adapter", "logit_scale", "search_ab", "tip_grids", "tip_init",
]

logger = logging.getLogger(__name__)

# a = s * step, s = mean per-row std of the zero-shot logits: 0, then 24 log-spaced in [0.01, 10].
A_STEPS: tuple[float, ...] = (0.0, *(10.0 ** (-2.0 + 3.0 * i / 23) for i in range(24)))
# b: 20 values linspace(0.5, 12).
DEFAULT_B_GRID: tuple[float, ...] = tuple(0.5 + 11.5 * i / 19 for i in range(20))
TENSOR_FIELDS: tuple[str, ...] = ("keys", "values")
OPTIONAL_TENSOR_FIELDS: tuple[str, ...] = ("class_embeddings",)
SCALAR_FIELDS: tuple[str, ...] = ("a", "b", "fine_tuned")

# Tip-Adapter's configs: dataset -> (search_scale (b, a), init_alpha); init_beta = 1, search_step
# (200, 20) everywhere. imagenet, oxford_pets, dtd, eurosat, fgvc_aircraft from
# gaopengcuhk/Tip-Adapter configs/*.yaml; the other six from erjui/DHO configs/*.yaml (same format,
# same values on the five shared datasets). Other datasets get imagenet's row.
TIP_HYPERPARAMETERS: dict[str, tuple[tuple[float, float], float]] = {
    "imagenet": ((7, 3), 1.17), "oxford_pets": ((7, 3), 1.17), "dtd": ((13, 13), 2.0),
    "eurosat": ((12, 10), 2.0), "fgvc_aircraft": ((30, 30), 5.0), "caltech101": ((12, 5), 3.0),
    "food101": ((10, 10), 1.17), "oxford_flowers": ((50, 50), 10.0), "stanford_cars": ((20, 10), 3.0),
    "sun397": ((12, 10), 1.17), "ucf101": ((7, 3), 3.0),
}
TIP_SEARCH_STEP: tuple[int, int] = (200, 20)  # (b steps, a steps)
TIP_INIT_BETA = 1.0
KEY_MEANS = ("raw_mean", "normalized_mean")
TRAIN_VIEWS = ("fresh", "fixed")
GRIDS = ("dho", "tip")


def cache_logits(features: Tensor, keys: Tensor, values: Tensor, b: float) -> Tensor:
    """The cache model's votes exp(-b * (1 - f @ keys.T)) @ values.

    features [B, D] (L2-normalised), keys [N, D], values [N, C] -> [B, C].
    """
    affinity = features @ keys.t()  # [B, N], cosine similarity when keys are unit norm
    return torch.exp(-b * (1.0 - affinity)) @ values


@dataclass
class TipAdapter:
    """A fitted Tip-Adapter(-F) head on top of a frozen teacher.

    keys [N, D]: cache keys, one per labeled shot (unit norm unless fine-tuned);
    values [N, C]: one-hot float labels of the shots; a: residual weight of the cache;
    b: sharpness of the affinity; fine_tuned: whether the keys were trained (Tip-Adapter-F);
    class_embeddings [C, D]: the zero-shot head to use instead of the base teacher's (an imported
    teacher brings its own, see :func:`dho.teachers.fewshot.load_tip_adapter_file`), or None.
    """

    keys: Tensor
    values: Tensor
    a: float
    b: float
    fine_tuned: bool = False
    class_embeddings: Tensor | None = None

    def __post_init__(self) -> None:
        if self.keys.ndim != 2 or self.values.ndim != 2 or self.keys.shape[0] != self.values.shape[0]:
            raise ValueError(f"keys [N, D] and values [N, C] must share N, got {tuple(self.keys.shape)} "
                             f"and {tuple(self.values.shape)}")
        w = self.class_embeddings
        if w is not None and tuple(w.shape) != (self.values.shape[1], self.keys.shape[1]):
            raise ValueError(f"class_embeddings must be [C, D] = {(self.values.shape[1], self.keys.shape[1])}, "
                             f"got {tuple(w.shape)}")
        self.a, self.b, self.fine_tuned = float(self.a), float(self.b), bool(self.fine_tuned)

    @property
    def num_classes(self) -> int:
        return self.values.shape[1]

    def logits(self, features: Tensor, zero_shot_logits: Tensor) -> Tensor:
        """Normalised features [B, D] and the teacher's zero-shot logits [B, C] -> logits [B, C]."""
        votes = cache_logits(features.to(self.keys), self.keys, self.values, self.b)
        return zero_shot_logits + self.a * votes

    def state(self) -> dict[str, Tensor | float | bool]:
        """Everything needed to rebuild the head.

        "keys" and "values" (and "class_embeddings" when set) are tensors (for safetensors); "a",
        "b" and "fine_tuned" are plain Python scalars (for JSON). See TENSOR_FIELDS,
        OPTIONAL_TENSOR_FIELDS and SCALAR_FIELDS.
        """
        own = {} if self.class_embeddings is None else {"class_embeddings": self.class_embeddings.detach().contiguous()}
        return {"keys": self.keys.detach().contiguous(), "values": self.values.detach().contiguous(), **own,
                "a": self.a, "b": self.b, "fine_tuned": self.fine_tuned}

    @classmethod
    def from_state(cls, state: dict) -> TipAdapter:
        """Inverse of :meth:`state`; accepts the tensors and scalars merged into one dict."""
        missing = [k for k in TENSOR_FIELDS + SCALAR_FIELDS if k not in state]
        if missing:
            raise KeyError(f"Tip-Adapter state lacks {missing}")
        return cls(keys=state["keys"], values=state["values"], a=float(state["a"]), b=float(state["b"]),
                   fine_tuned=bool(state["fine_tuned"]), class_embeddings=state.get("class_embeddings"))

    def describe(self) -> dict:
        own = {} if self.class_embeddings is None else {"own_class_embeddings": True}
        return {"shots": int(self.keys.shape[0]), "a": self.a, "b": self.b, "fine_tuned": self.fine_tuned, **own}


def build_cache(view_features: Tensor, labels: Tensor, num_classes: int,
                key_mean: str = "raw_mean") -> tuple[Tensor, Tensor]:
    """Tip-Adapter's cache from V augmented views of N labeled shots.

    view_features [V, N, D] -> keys [N, D]. ``key_mean="raw_mean"`` (Tip-Adapter's
    build_cache_model): the views' features as given (un-normalised image features) averaged over
    V, then L2-normalised once, so views with larger feature norms weigh more;
    ``"normalized_mean"``: each view L2-normalised first. On unit-norm features the two agree.
    labels [N] -> values [N, C]: one-hot float.
    """
    if view_features.ndim != 3 or view_features.shape[1] != labels.shape[0]:
        raise ValueError(f"view_features must be [V, N, D] with N = len(labels), got {tuple(view_features.shape)}")
    if key_mean not in KEY_MEANS:
        raise ValueError(f"key_mean={key_mean!r} is not one of {', '.join(KEY_MEANS)}")
    views = view_features.float() if key_mean == "raw_mean" else F.normalize(view_features.float(), dim=-1)
    keys = F.normalize(views.mean(dim=0), dim=-1)
    values = F.one_hot(labels.long(), num_classes).to(keys)
    return keys, values


def logit_scale(zs_logits: Tensor) -> float:
    """s = the mean per-row (population) std of zero-shot logits [M, C]; 1 when they are constant.

    The unit of a: relative to the logits' spread, one grid serves CLIP logits (100 * cos) and
    log-probabilities alike.
    """
    s = float(zs_logits.float().std(dim=-1, correction=0).mean())
    return s if math.isfinite(s) and s > 0.0 else 1.0


def default_a_grid(zs_logits: Tensor) -> tuple[float, ...]:
    """The default a grid for zero-shot logits [M, C]: logit_scale(zs_logits) * A_STEPS."""
    s = logit_scale(zs_logits)
    return tuple(s * step for step in A_STEPS)


def tip_grids(dataset: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Tip-Adapter's search grids for ``dataset`` -> (a grid, b grid).

    With search_scale (sb, sa) from TIP_HYPERPARAMETERS and search_step (200, 20):
    b_i = i * (sb - 0.1) / 200 + 0.1 and a_j = j * (sa - 0.1) / 20 + 0.1, both ascending from 0.1
    and stopping one step short of the scale. a is in raw units: the weight of the cache votes
    on CLIP logits 100 * cos. Searched b outer, a inner, first maximum (as :func:`search_ab`).
    """
    (scale_b, scale_a), _ = TIP_HYPERPARAMETERS.get(dataset or "", TIP_HYPERPARAMETERS["imagenet"])
    steps_b, steps_a = TIP_SEARCH_STEP
    b_grid = tuple(i * (scale_b - 0.1) / steps_b + 0.1 for i in range(steps_b))
    a_grid = tuple(i * (scale_a - 0.1) / steps_a + 0.1 for i in range(steps_a))
    return a_grid, b_grid


def tip_init(dataset: str | None) -> tuple[float, float]:
    """Tip-Adapter's initial (a, b) for ``dataset``: (init_alpha, init_beta = 1)."""
    return TIP_HYPERPARAMETERS.get(dataset or "", TIP_HYPERPARAMETERS["imagenet"])[1], TIP_INIT_BETA


@torch.no_grad()
def _grid_correct(affinity: Tensor, zs_logits: Tensor, labels: Tensor, values: Tensor,
                  a_grid: Sequence[float], b_grid: Sequence[float], max_elements: int) -> Tensor:
    """Correct counts of every (b, a): [len(b_grid), len(a_grid)]; rows in chunks of [A, rows, C]."""
    a = torch.tensor(a_grid, dtype=zs_logits.dtype, device=zs_logits.device).view(-1, 1, 1)  # [A, 1, 1]
    m, c = zs_logits.shape
    chunk = max(1, max_elements // (len(a_grid) * c))
    correct = torch.zeros(len(b_grid), len(a_grid), dtype=torch.long)
    for bi, b in enumerate(b_grid):
        votes = torch.exp(-b * (1.0 - affinity)) @ values  # [M, C], once per b
        for start in range(0, m, chunk):
            rows = slice(start, start + chunk)
            logits = zs_logits[rows] + a * votes[rows]  # [A, rows, C]
            correct[bi] += (logits.argmax(-1) == labels[rows]).sum(-1).cpu()
    return correct


def search_ab(
    features_val: Tensor, zs_logits_val: Tensor, labels_val: Tensor, keys: Tensor, values: Tensor,
    a_grid: Sequence[float] | None = None, b_grid: Sequence[float] | None = None,
    max_elements: int = 1 << 22,
) -> tuple[float, float, float]:
    """Exhaustive search of validation accuracy over (a, b) -> (a, b, accuracy in [0, 1]).

    features_val [M, D] (normalised), zs_logits_val [M, C], labels_val [M]; keys [N, D],
    values [N, C]. Defaults: a from :func:`default_a_grid`, b from DEFAULT_B_GRID. Ties go to the
    first best in (b outer, a inner) order over the grids as given (the defaults ascend), so with
    a = 0 in the grid the result never falls below zero-shot accuracy and a useless cache gives
    (0, b_grid[0]). Never call this on the test split.
    """
    zs = zs_logits_val.float()
    a_grid = tuple(default_a_grid(zs) if a_grid is None else a_grid)
    b_grid = tuple(DEFAULT_B_GRID if b_grid is None else b_grid)
    feats, keys = features_val.to(zs), keys.to(zs)
    affinity = feats @ keys.t()  # [M, N], once for every (a, b)
    correct = _grid_correct(affinity, zs, labels_val.to(zs.device), values.to(zs), a_grid, b_grid, max_elements)
    best = int(torch.argmax(correct.flatten()))  # first maximum in row-major (b, a) order
    bi, ai = divmod(best, len(a_grid))
    return float(a_grid[ai]), float(b_grid[bi]), float(correct[bi, ai]) / max(zs.shape[0], 1)


def _epoch_rows(train_views: str, epoch: int, v: int, n: int, gen: torch.Generator) -> Tensor:
    """Rows of the flattened [V * N] views one epoch visits, in its order: "fixed", all V * N
    shuffled; "fresh", view ``epoch``'s N rows shuffled (a newly augmented pass over the shots)."""
    if train_views == "fixed":
        return torch.randperm(v * n, generator=gen)
    return epoch * n + torch.randperm(n, generator=gen)


def fine_tune_keys(
    view_features: Tensor, view_zs_logits: Tensor, labels: Tensor, keys: Tensor, values: Tensor,
    a: float, b: float, epochs: int = 20, lr: float = 1e-3, weight_decay: float = 1e-2, eps: float = 1e-4,
    batch_size: int = 256, seed: int = 0, train_views: str = "fresh",
) -> Tensor:
    """Tip-Adapter-F: train the cache keys with cross-entropy; returns the new keys [N, D].

    view_features [V, N, D] (normalised), view_zs_logits [V, N, C], labels [N]; keys [N, D] are
    the initial keys, values [N, C] stay fixed, as do a and b. ``train_views="fresh"``
    (Tip-Adapter-F: a freshly augmented loader every epoch): epoch e visits view e of every shot,
    so V >= epochs; ``"fixed"``: every epoch visits all V * N views. Seeded random order, batches
    of ``batch_size``; AdamW (lr, eps, weight decay as Tip-Adapter-F) with a cosine schedule over
    all steps. The keys are not renormalised while training (in Tip-Adapter-F they are the weights
    of a Linear layer). Deterministic for a given seed.
    """
    v, n, d = view_features.shape
    if train_views not in TRAIN_VIEWS:
        raise ValueError(f"train_views={train_views!r} is not one of {', '.join(TRAIN_VIEWS)}")
    if train_views == "fresh" and v < epochs:
        raise ValueError(f"train_views=fresh trains epoch e on view e: {epochs} epochs need {epochs} views, got {v}")
    feats = view_features.reshape(v * n, d).float().to(keys.device)
    zs = view_zs_logits.reshape(v * n, -1).to(feats)
    targets = labels.long().repeat(v).to(feats.device)  # [V * N], view-major like feats
    values = values.to(feats)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = v * n if train_views == "fixed" else n
    steps_per_epoch = math.ceil(per_epoch / batch_size)
    with torch.enable_grad():
        weight = torch.nn.Parameter(keys.detach().clone().to(feats))
        optimizer = torch.optim.AdamW([weight], lr=lr, eps=eps, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * steps_per_epoch))
        for epoch in range(epochs):
            order = _epoch_rows(train_views, epoch, v, n, gen).to(feats.device)
            total = 0.0
            for start in range(0, per_epoch, batch_size):
                idx = order[start:start + batch_size]
                logits = zs[idx] + a * cache_logits(feats[idx], weight, values, b)
                loss = F.cross_entropy(logits, targets[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(idx)
            logger.debug("tip-adapter-F epoch %d/%d: loss %.4f", epoch + 1, epochs, total / per_epoch)
    return weight.detach()


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of rows of logits [M, C] whose argmax equals labels [M]."""
    return float((logits.argmax(-1) == labels.to(logits.device)).float().mean()) if len(labels) else 0.0


def fit_tip_adapter(
    train_view_features: Tensor, train_view_zs_logits: Tensor, labels: Tensor,
    val_features: Tensor | None, val_zs_logits: Tensor | None, val_labels: Tensor | None, num_classes: int,
    fine_tune: bool, epochs: int = 20, seed: int = 0, *, key_features: Tensor | None = None,
    key_mean: str = "raw_mean", train_views: str = "fresh", grid: str = "dho", dataset: str | None = None,
) -> TipAdapter:
    """Fit Tip-Adapter (or Tip-Adapter-F when ``fine_tune``) from cached teacher outputs.

    train_view_features [V, N, D] (normalised), train_view_zs_logits [V, N, C], labels [N]:
    augmented views of the N labeled shots that Tip-Adapter-F trains on (see
    :func:`fine_tune_keys` for ``train_views``). key_features [V', N, D]: the views the keys are
    built from with ``key_mean`` (see :func:`build_cache`; un-normalised features for
    "raw_mean"), None for train_view_features. val_features [M, D], val_zs_logits [M, C],
    val_labels [M]: the validation split that picks (a, b).

    ``grid="dho"``: a from :func:`default_a_grid` (with 0), b from DEFAULT_B_GRID; fine-tuning
    starts from the best (a > 0, b); without validation data (None or empty), a =
    logit_scale(train zero-shot logits) and b = 1. ``grid="tip"``: :func:`tip_grids` and
    :func:`tip_init` of ``dataset`` (fine-tuning and the no-validation fallback use
    (init_alpha, 1)). Logs the validation accuracy of each stage.
    """
    if grid not in GRIDS:
        raise ValueError(f"grid={grid!r} is not one of {', '.join(GRIDS)}")
    keys, values = build_cache(train_view_features if key_features is None else key_features, labels, num_classes,
                               key_mean)
    grids: dict[str, Any] = {} if grid == "dho" else dict(zip(("a_grid", "b_grid"), tip_grids(dataset)))  # search_ab's a_grid, b_grid

    def tune(keys: Tensor, a: float, b: float) -> Tensor:
        return fine_tune_keys(train_view_features, train_view_zs_logits, labels, keys, values, a, b,
                              epochs=epochs, seed=seed, train_views=train_views)

    if val_features is None or val_zs_logits is None or val_labels is None or len(val_labels) == 0:
        a, b = (logit_scale(train_view_zs_logits.reshape(-1, num_classes)), 1.0) if grid == "dho" else tip_init(dataset)
        logger.warning("tip-adapter: no validation data, keeping a=%.4g, b=%.4g (%d shots)", a, b, keys.shape[0])
        return TipAdapter(tune(keys, a, b) if fine_tune else keys, values, a, b, fine_tuned=fine_tune)
    zs_acc = _accuracy(val_zs_logits, val_labels)
    a, b, acc = search_ab(val_features, val_zs_logits, val_labels, keys, values, **grids)
    logger.info("tip-adapter validation: zero-shot %.2f%%, tip-adapter %.2f%% (a=%.4g, b=%.4g, %d shots)",
                100 * zs_acc, 100 * acc, a, b, keys.shape[0])
    if not fine_tune:
        return TipAdapter(keys, values, a, b, fine_tuned=False)
    if grid == "tip":  # Tip-Adapter-F trains at the configs' (init_alpha, init_beta)
        a_init, b_init = tip_init(dataset)
    else:  # the keys get no gradient at a = 0, so the fine-tuning starts from the best a > 0
        a_init, b_init, _ = search_ab(val_features, val_zs_logits, val_labels, keys, values,
                                      a_grid=default_a_grid(val_zs_logits)[1:])
    keys = tune(keys, a_init, b_init)
    a, b, acc_f = search_ab(val_features, val_zs_logits, val_labels, keys, values, **grids)
    logger.info("tip-adapter-F validation: %.2f%% (a=%.4g, b=%.4g; fine-tuned %d epochs from a=%.4g, b=%.4g)",
                100 * acc_f, a, b, epochs, a_init, b_init)
    return TipAdapter(keys, values, a, b, fine_tuned=True)

