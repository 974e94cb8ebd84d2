import itertools
import json
import logging
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dho.cli.app import main
from dho.config import ConfigError
from dho.data import ImageStore, TrainViews
from dho.data.splits import splits_for
from dho.preprocess import Preprocess
from dho.teachers import Teacher, build_teacher
from dho.teachers.cache import TeacherCache
from dho.teachers.fewshot import (
    ADAPTER_SEED_OFFSET,
    FewShotTeacher,
    adapter_view_indices,
    fit_fewshot_teacher,
    load_tip_adapter_file,
)
from dho.teachers.tip_adapter import (
    A_STEPS,
    DEFAULT_B_GRID,
    SCALAR_FIELDS,
    TENSOR_FIELDS,
    TipAdapter,
    build_cache,
    default_a_grid,
    fine_tune_keys,
    fit_tip_adapter,
    search_ab,
    tip_grids,
    tip_init,
)


def make_problem(seed: int = 0, classes: int = 5, dim: int = 16, shots: int = 4, views: int = 3, val: int = 200):
    """Features cluster by class; zero-shot logits are right on average but noisy.

    Returns train view features [V, N, D], train view logits [V, N, C], labels [N],
    val features [M, D], val logits [M, C], val labels [M].
    """
    gen = torch.Generator().manual_seed(seed)
    centroids = F.normalize(torch.randn(classes, dim, generator=gen), dim=-1)

    def sample(y: torch.Tensor, lead: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = F.normalize(centroids[y] + 0.3 * torch.randn(*lead, dim, generator=gen), dim=-1)
        zs = 3.0 * F.one_hot(y, classes).float() + 3.0 * torch.randn(*lead, classes, generator=gen)
        return feats, zs

    labels = torch.arange(classes).repeat_interleave(shots)  # [N]
    train_feats, train_zs = sample(labels.expand(views, -1), (views, len(labels)))
    val_labels = torch.randint(0, classes, (val,), generator=gen)
    val_feats, val_zs = sample(val_labels, (val,))
    return train_feats, train_zs, labels, val_feats, val_zs, val_labels


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()


def train_loss(adapter: TipAdapter, view_feats: torch.Tensor, view_zs: torch.Tensor, labels: torch.Tensor) -> float:
    v, n, d = view_feats.shape
    logits = adapter.logits(view_feats.reshape(v * n, d), view_zs.reshape(v * n, -1))
    return F.cross_entropy(logits, labels.repeat(v)).item()


def test_a_zero_gives_the_zero_shot_logits_exactly():
    gen = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    values = F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    feats = F.normalize(torch.randn(10, 8, generator=gen), dim=-1)
    zs = 30 * torch.randn(10, 3, generator=gen)
    assert torch.equal(TipAdapter(keys, values, a=0.0, b=5.0).logits(feats, zs), zs)


def test_logits_match_a_hand_computed_example():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    values = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # key 0 votes for class 1, key 1 for class 0
    feats = torch.tensor([[0.6, 0.8]])  # affinities 0.6 and 0.8
    zs = torch.tensor([[1.0, 2.0]])
    # class 0: 1 + 2 * exp(-3 * 0.2); class 1: 2 + 2 * exp(-3 * 0.4)
    expected = torch.tensor([[2.0976233, 2.6023884]])
    out = TipAdapter(keys, values, a=2.0, b=3.0).logits(feats, zs)
    assert torch.allclose(out, expected, atol=1e-6)


def test_build_cache_averages_normalised_views_and_renormalises():
    views = torch.tensor([
        [[2.0, 0.0], [0.0, -1.0]],  # view 0 of shots 0 and 1
        [[0.0, 3.0], [0.0, -5.0]],  # view 1
    ])
    keys, values = build_cache(views, torch.tensor([2, 0]), num_classes=3, key_mean="normalized_mean")
    r = 1 / math.sqrt(2)
    assert torch.allclose(keys, torch.tensor([[r, r], [0.0, -1.0]]))
    assert torch.equal(values, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    # Tip-Adapter's rule (the default): raw features averaged, normalised once: (1, 1.5) / |(1, 1.5)|
    raw, _ = build_cache(views, torch.tensor([2, 0]), num_classes=3)
    assert torch.allclose(raw, torch.tensor([[2.0, 3.0], [0.0, -1.0]]) / torch.tensor([[math.sqrt(13)], [1.0]]))


def test_build_cache_key_means_match_their_reference_rules():
    gen = torch.Generator().manual_seed(0)
    views = torch.randn(10, 6, 8, generator=gen) * torch.rand(10, 6, 1, generator=gen) * 5  # raw, norms vary
    labels = torch.arange(6) % 3
    raw, _ = build_cache(views, labels, 3, key_mean="raw_mean")
    normalised, _ = build_cache(views, labels, 3, key_mean="normalized_mean")
    mean = views.mean(dim=0)  # Tip-Adapter: mean over the augmented passes, then key / key.norm()
    assert torch.allclose(raw, mean / mean.norm(dim=-1, keepdim=True), atol=1e-6)
    unit = views / views.norm(dim=-1, keepdim=True)
    assert torch.allclose(normalised, F.normalize(unit.mean(dim=0), dim=-1), atol=1e-6)
    assert not torch.allclose(raw, normalised, atol=1e-3)
    # on unit-norm features (all a cache keeps) the two rules agree
    assert torch.allclose(build_cache(unit, labels, 3, key_mean="raw_mean")[0], normalised, atol=1e-6)
    with pytest.raises(ValueError, match="key_mean"):
        build_cache(views, labels, 3, key_mean="median")


def test_default_grids():
    assert len(A_STEPS) == 25 and A_STEPS[0] == 0.0
    assert A_STEPS[1] == pytest.approx(0.01) and A_STEPS[-1] == pytest.approx(10.0)
    assert all(x < y for x, y in itertools.pairwise(A_STEPS))
    assert len(DEFAULT_B_GRID) == 20
    assert DEFAULT_B_GRID[0] == 0.5 and DEFAULT_B_GRID[-1] == pytest.approx(12.0)
    # the a grid follows the logits' scale: CLIP-like (x100) and log-prob-like logits alike
    zs = torch.tensor([[1.0, 3.0], [0.0, 4.0]])  # population stds 1 and 2 -> s = 1.5
    assert default_a_grid(zs) == pytest.approx([1.5 * s for s in A_STEPS])
    assert default_a_grid(100 * zs) == pytest.approx([150 * s for s in A_STEPS])
    assert default_a_grid(torch.ones(3, 4)) == pytest.approx(list(A_STEPS))


def test_search_finds_a_useful_cache():
    train_feats, _, labels, val_feats, val_zs, val_labels = make_problem(seed=0)
    keys, values = build_cache(train_feats, labels, num_classes=5)
    zs_acc = accuracy(val_zs, val_labels)
    a, b, acc = search_ab(val_feats, val_zs, val_labels, keys, values)
    assert a > 0 and b in DEFAULT_B_GRID
    assert acc > zs_acc + 0.2
    # the reported accuracy is what the fitted head really gets
    assert acc == pytest.approx(accuracy(TipAdapter(keys, values, a, b).logits(val_feats, val_zs), val_labels))


def test_search_keeps_zero_shot_when_the_cache_is_useless():
    _, _, _, val_feats, val_zs, val_labels = make_problem(seed=1)
    keep = val_labels != 0
    val_feats, val_zs, val_labels = val_feats[keep], val_zs[keep], val_labels[keep]
    zs_acc = accuracy(val_zs, val_labels)
    # every key votes for class 0, which never is the answer: any a > 0 can only hurt or tie
    keys = F.normalize(torch.randn(20, 16, generator=torch.Generator().manual_seed(2)), dim=-1)
    values = F.one_hot(torch.zeros(20, dtype=torch.long), 5).float()
    a, b, acc = search_ab(val_feats, val_zs, val_labels, keys, values)
    assert (a, b) == (0.0, DEFAULT_B_GRID[0]) and acc == pytest.approx(zs_acc)


def test_search_never_reports_below_zero_shot():
    _, _, _, val_feats, val_zs, val_labels = make_problem(seed=3)
    gen = torch.Generator().manual_seed(4)
    keys = F.normalize(torch.randn(20, 16, generator=gen), dim=-1)
    values = F.one_hot(torch.randint(0, 5, (20,), generator=gen), 5).float()
    _, _, acc = search_ab(val_feats, val_zs, val_labels, keys, values)
    assert acc >= accuracy(val_zs, val_labels)


def test_search_tie_rule_is_first_b_then_smallest_a():
    _, _, _, val_feats, val_zs, val_labels = make_problem(seed=5)
    keys = F.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    values = torch.zeros(4, 5)  # a cache with no votes: every (a, b) ties
    assert search_ab(val_feats, val_zs, val_labels, keys, values, a_grid=[0.5, 0.0, 2.0], b_grid=[3.0, 1.0])[:2] \
        == (0.5, 3.0)


def test_fine_tune_lowers_the_training_loss_and_is_deterministic():
    train_feats, train_zs, labels, _, _, _ = make_problem(seed=6)
    keys, values = build_cache(train_feats, labels, num_classes=5)
    initial = keys.clone()
    with torch.no_grad():  # callers may be in no_grad
        tuned = fine_tune_keys(train_feats, train_zs, labels, keys, values, a=1.0, b=5.0, batch_size=8, seed=0,
                               train_views="fixed")
    again = fine_tune_keys(train_feats, train_zs, labels, keys, values, a=1.0, b=5.0, batch_size=8, seed=0,
                           train_views="fixed")
    other = fine_tune_keys(train_feats, train_zs, labels, keys, values, a=1.0, b=5.0, batch_size=8, seed=1,
                           train_views="fixed")
    assert torch.equal(keys, initial) and not tuned.requires_grad
    assert torch.equal(tuned, again) and not torch.equal(tuned, other)
    before = train_loss(TipAdapter(keys, values, 1.0, 5.0), train_feats, train_zs, labels)
    after = train_loss(TipAdapter(tuned, values, 1.0, 5.0, fine_tuned=True), train_feats, train_zs, labels)
    assert after < before - 0.01


def test_state_round_trips_through_safetensors_and_json(tmp_path):
    gen = torch.Generator().manual_seed(7)
    adapter = TipAdapter(torch.randn(6, 4, generator=gen), F.one_hot(torch.arange(6) % 3, 3).float(),
                         a=0.123456789, b=7.25, fine_tuned=True)
    state = adapter.state()
    save_file({k: state[k] for k in TENSOR_FIELDS}, tmp_path / "tip.safetensors")
    (tmp_path / "tip.json").write_text(json.dumps({k: state[k] for k in SCALAR_FIELDS}))
    loaded = TipAdapter.from_state({**load_file(tmp_path / "tip.safetensors"),
                                    **json.loads((tmp_path / "tip.json").read_text())})
    assert torch.equal(loaded.keys, adapter.keys) and torch.equal(loaded.values, adapter.values)
    assert (loaded.a, loaded.b, loaded.fine_tuned) == (adapter.a, adapter.b, adapter.fine_tuned)
    assert loaded.describe() == {"shots": 6, "a": 0.123456789, "b": 7.25, "fine_tuned": True}
    with pytest.raises(KeyError):
        TipAdapter.from_state({k: state[k] for k in TENSOR_FIELDS})


def test_fit_tip_adapter_beats_zero_shot_on_validation(caplog):
    train_feats, train_zs, labels, val_feats, val_zs, val_labels = make_problem(seed=8)
    zs_acc = accuracy(val_zs, val_labels)
    with caplog.at_level(logging.INFO, logger="dho.teachers.tip_adapter"):
        plain = fit_tip_adapter(train_feats, train_zs, labels, val_feats, val_zs, val_labels, 5, fine_tune=False)
        tuned = fit_tip_adapter(train_feats, train_zs, labels, val_feats, val_zs, val_labels, 5, fine_tune=True,
                                epochs=3)
    assert not plain.fine_tuned and tuned.fine_tuned
    assert not torch.equal(plain.keys, tuned.keys)
    for adapter in (plain, tuned):
        assert accuracy(adapter.logits(val_feats, val_zs), val_labels) > zs_acc + 0.2
    assert "zero-shot" in caplog.text and "tip-adapter-F" in caplog.text


def test_fit_without_validation_keeps_the_scaled_defaults():
    train_feats, train_zs, labels, _, _, _ = make_problem(seed=9)
    plain = fit_tip_adapter(train_feats, train_zs, labels, None, None, None, num_classes=5, fine_tune=False)
    s = train_zs.reshape(-1, 5).std(dim=-1, correction=0).mean().item()
    assert plain.a == pytest.approx(s) and plain.b == 1.0 and not plain.fine_tuned
    tuned = fit_tip_adapter(train_feats, train_zs, labels, None, None, None, num_classes=5, fine_tune=True, epochs=2)
    assert tuned.fine_tuned and (tuned.a, tuned.b) == (plain.a, plain.b) and not torch.equal(tuned.keys, plain.keys)


def reference_fine_tune(epoch_rows, keys, values, a, b, epochs, lr):
    """Tip-Adapter-F's loop with one full batch per epoch: AdamW(lr, eps=1e-4, wd=0.01), cosine
    over all steps, CE on zero-shot + a * cache votes; epoch_rows(e) -> (features, logits, labels)."""
    weight = torch.nn.Parameter(keys.clone())
    optimizer = torch.optim.AdamW([weight], lr=lr, eps=1e-4, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    for epoch in range(epochs):
        feats, zs, y = epoch_rows(epoch)
        loss = F.cross_entropy(zs + a * torch.exp(-(b - b * feats @ weight.t())) @ values, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return weight.detach()


def test_fresh_views_train_epoch_e_on_view_e_and_fixed_on_all():
    train_feats, train_zs, labels, _, _, _ = make_problem(seed=10, views=4)
    keys, values = build_cache(train_feats, labels, num_classes=5)
    n = len(labels)
    kw = {"a": 1.0, "b": 5.0, "lr": 0.05, "batch_size": 256, "seed": 0}  # one batch per epoch: the order does not matter
    fresh = fine_tune_keys(train_feats, train_zs, labels, keys, values, epochs=3, train_views="fresh", **kw)
    want = reference_fine_tune(lambda e: (train_feats[e], train_zs[e], labels), keys, values, 1.0, 5.0, 3, 0.05)
    assert torch.allclose(fresh, want, atol=1e-5)
    # view 3 is never read in 3 epochs; changing view 1 changes the keys
    changed = train_feats.clone()
    changed[3] = F.normalize(torch.randn(n, 16), dim=-1)
    assert torch.equal(fine_tune_keys(changed, train_zs, labels, keys, values, epochs=3, train_views="fresh", **kw), fresh)
    changed[1] = changed[3]
    assert not torch.allclose(fine_tune_keys(changed, train_zs, labels, keys, values, epochs=3, train_views="fresh", **kw),
                              fresh, atol=1e-4)
    fixed = fine_tune_keys(train_feats, train_zs, labels, keys, values, epochs=3, train_views="fixed", **kw)
    every = (train_feats.reshape(-1, 16), train_zs.reshape(-1, 5), labels.repeat(4))
    assert torch.allclose(fixed, reference_fine_tune(lambda e: every, keys, values, 1.0, 5.0, 3, 0.05), atol=1e-5)
    with pytest.raises(ValueError, match="5 epochs need 5 views"):
        fine_tune_keys(train_feats, train_zs, labels, keys, values, epochs=5, train_views="fresh", **kw)


def test_tip_grids_follow_their_configs():
    a, b = tip_grids("dtd")  # search_scale [13, 13], search_step [200, 20]
    assert len(b) == 200 and len(a) == 20
    assert b[0] == a[0] == pytest.approx(0.1)
    assert b[1] == pytest.approx(0.1 + 12.9 / 200) and b[-1] == pytest.approx(199 * 12.9 / 200 + 0.1)
    assert a[-1] == pytest.approx(19 * 12.9 / 20 + 0.1) and a[-1] < 13
    assert max(tip_grids("fgvc_aircraft")[0]) == pytest.approx(19 * 29.9 / 20 + 0.1)
    assert tip_grids(None) == tip_grids("imagenet") == tip_grids("no-such-dataset")
    assert max(tip_grids(None)[1]) == pytest.approx(199 * 6.9 / 200 + 0.1)  # imagenet's [7, 3]
    assert tip_init("eurosat") == (2.0, 1.0) and tip_init(None) == (1.17, 1.0)


def their_search(features, zs, labels, keys, values, a_grid, b_grid):
    """Tip-Adapter's search_hp: beta outer, alpha inner, a strictly better accuracy replaces."""
    best_acc, best = 0, (0, 0)
    for b in b_grid:
        for a in a_grid:
            acc = accuracy(zs + a * torch.exp(-(b - b * features @ keys.t())) @ values, labels)
            if acc > best_acc:
                best_acc, best = acc, (a, b)
    return best


def test_search_over_the_tip_grid_keeps_their_first_maximum():
    train_feats, _, labels, val_feats, val_zs, val_labels = make_problem(seed=11, val=30)  # few rows: many ties
    keys, values = build_cache(train_feats, labels, num_classes=5)
    a_grid, b_grid = tip_grids("imagenet")
    a, b, _ = search_ab(val_feats, val_zs, val_labels, keys, values, a_grid=a_grid, b_grid=b_grid)
    assert (a, b) == their_search(val_feats, val_zs, val_labels, keys, values, a_grid, b_grid)
    # everything ties when the cache casts no votes: the first (b, a) of the grid
    no_votes = torch.zeros_like(values)
    assert search_ab(val_feats, val_zs, val_labels, keys, no_votes, a_grid=a_grid, b_grid=b_grid)[:2] == (a_grid[0], b_grid[0])


def test_fit_with_the_tip_grid_starts_from_their_init(monkeypatch):
    train_feats, train_zs, labels, val_feats, val_zs, val_labels = make_problem(seed=12)
    import dho.teachers.tip_adapter as tip

    seen = {}
    real = tip.fine_tune_keys

    def spy(*args, **kwargs):
        seen["a"], seen["b"], seen["train_views"] = args[5], args[6], kwargs["train_views"]
        return real(*args, **kwargs)

    monkeypatch.setattr(tip, "fine_tune_keys", spy)
    adapter = fit_tip_adapter(train_feats, train_zs, labels, val_feats, val_zs, val_labels, 5, fine_tune=True, epochs=3,
                              grid="tip", dataset="dtd")
    assert (seen["a"], seen["b"], seen["train_views"]) == (2.0, 1.0, "fresh")
    a_grid, b_grid = tip_grids("dtd")
    assert adapter.fine_tuned and adapter.a in a_grid and adapter.b in b_grid
    fallback = fit_tip_adapter(train_feats, train_zs, labels, None, None, None, 5, fine_tune=False, grid="tip",
                               dataset="fgvc_aircraft")
    assert (fallback.a, fallback.b) == (5.0, 1.0)


# ---- the DHO authors' Tip-Adapter-F teacher files ---------------------------------------------

def write_teacher_file(path, classes=3, dim=8, shots=2, seed=0, **changes):
    """A file like the ones erjui/DHO train_others.py reads: fp16 tensors, numpy float64 scalars."""
    gen = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(classes * shots, dim, generator=gen), dim=-1)
    data = {
        "adapter_weight": (keys + 0.05 * torch.randn(keys.shape, generator=gen)).half(),  # fine-tuned keys [N, D]
        "cache_keys": keys.t().half(),  # [D, N], unused
        "cache_values": F.one_hot(torch.arange(classes).repeat_interleave(shots), classes).half(),
        "clip_weights": F.normalize(torch.randn(dim, classes, generator=gen), dim=0).half(),  # [D, C]
        "best_alpha": np.float64(1.7), "best_beta": np.float64(5.5),
    }
    data.update(changes)
    data = {k: v for k, v in data.items() if v is not None}
    torch.save(data, path)
    return data


class FixedTeacher(Teacher):
    """Features are the first D pixels of each image; its own class embeddings are random."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__(Preprocess((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 4))
        self.classnames = [f"c{i}" for i in range(classes)]
        self.class_embeddings = F.normalize(torch.randn(classes, dim), dim=-1)
        self.dim = dim

    def encode_image(self, pixels):
        return pixels.flatten(1)[:, :self.dim]


def test_imported_teacher_gives_their_logits(tmp_path):
    data = write_teacher_file(tmp_path / "teacher.pt")
    adapter = load_tip_adapter_file(tmp_path / "teacher.pt", num_classes=3, feature_dim=8)
    assert (adapter.a, adapter.b, adapter.fine_tuned) == (1.7, 5.5, True)
    teacher = FewShotTeacher(FixedTeacher(8, 3), adapter)
    assert teacher.id.endswith("+tip-adapter-f") and torch.equal(teacher.class_embeddings, adapter.class_embeddings)
    images = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    out = teacher(images)
    f = F.normalize(images.flatten(1)[:, :8], dim=-1)
    w, keys, values = data["clip_weights"].float(), data["adapter_weight"].float(), data["cache_values"].float()
    alpha, beta = float(data["best_alpha"]), float(data["best_beta"])
    want = 100.0 * f @ w + alpha * torch.exp(-(beta - beta * f @ keys.t())) @ values
    assert torch.allclose(out.logits, want, rtol=1e-5, atol=1e-4)
    assert torch.allclose(out.features, f)
    # the adapter state (what a sweep hands its workers) keeps the file's class embeddings
    again = FewShotTeacher(FixedTeacher(8, 3), TipAdapter.from_state(adapter.state()))
    assert torch.allclose(again(images).logits, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("changes, message", [
    ({"clip_weights": None}, "lacks clip_weights"),
    ({"cache_values": torch.zeros(5, 3)}, "do not fit together"),
    ({"clip_weights": torch.zeros(8, 4)}, "do not fit together"),
    ({"adapter_weight": torch.zeros(6)}, "2-d tensor"),
    ({"best_beta": "high"}, "best_beta is a str"),
])
def test_imported_teacher_file_errors_are_one_line(tmp_path, changes, message):
    write_teacher_file(tmp_path / "teacher.pt", **changes)
    with pytest.raises(ValueError, match=message) as err:
        load_tip_adapter_file(tmp_path / "teacher.pt", num_classes=3, feature_dim=8)
    assert "\n" not in str(err.value)


def test_imported_teacher_must_fit_the_run(tmp_path):
    write_teacher_file(tmp_path / "teacher.pt")
    with pytest.raises(ValueError, match="teacher for 3 classes, this run has 4"):
        load_tip_adapter_file(tmp_path / "teacher.pt", num_classes=4, feature_dim=8)
    with pytest.raises(ValueError, match="8-d image features, the base teacher gives 1024-d"):
        load_tip_adapter_file(tmp_path / "teacher.pt", num_classes=3, feature_dim=1024)


class Pickled:
    """Any class instance: unpickling it would import and build arbitrary code."""


class RunsACommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("make", [lambda tmp: Pickled(), lambda tmp: RunsACommand(tmp / "ran")],
                         ids=["class-instance", "os-system-reduce"])
def test_files_with_other_pickled_objects_are_refused(tmp_path, make):
    write_teacher_file(tmp_path / "teacher.pt", extra=make(tmp_path))
    with pytest.raises(ValueError, match="cannot be read as a plain torch file") as err:
        load_tip_adapter_file(tmp_path / "teacher.pt")
    assert "\n" not in str(err.value) and not (tmp_path / "ran").exists()


def test_adapter_file_config_builds_the_few_shot_teacher_from_the_file(tiny_cfg, tmp_path):
    cfg = tiny_cfg.override({"teacher.adapter": "tip-f", "teacher.adapter_file": str(tmp_path / "teacher.pt")})
    manifest = splits_for(cfg.data)
    base = build_teacher(cfg.teacher, manifest.classes)
    write_teacher_file(tmp_path / "teacher.pt", classes=len(manifest.classes), dim=base.class_embeddings.shape[1])
    teacher = fit_fewshot_teacher(cfg, base, manifest, view_size=32)
    assert (teacher.adapter.a, teacher.adapter.b) == (1.7, 5.5)
    assert adapter_view_indices(cfg) == range(0)
    with pytest.raises(ConfigError, match="needs teacher.adapter=tip-f"):
        tiny_cfg.override({"teacher.adapter_file": "teacher.pt"})


def test_adapter_views_fresh_reads_one_more_view_per_epoch(tiny_cfg):
    cfg = tiny_cfg.override({"teacher.adapter": "tip-f", "teacher.adapter_views": 2, "teacher.adapter_epochs": 3,
                             "data.val_fraction": 0.2})
    assert adapter_view_indices(cfg) == range(5)
    assert adapter_view_indices(cfg.override({"teacher.adapter_train_views": "fixed"})) == range(2)
    assert adapter_view_indices(cfg.override({"teacher.adapter": "tip"})) == range(2)
    manifest = splits_for(cfg.data)
    base = build_teacher(cfg.teacher, manifest.classes)
    cache = TeacherCache(base)
    teacher = fit_fewshot_teacher(cfg, base, manifest, view_size=32, cache=cache)
    seed = cfg.seed + ADAPTER_SEED_OFFSET
    # the cache served the key views 0-1 and the three epochs' views 2-4
    assert {f"{seed}/{path}#{v}" for path, _ in manifest.labeled for v in range(5)} <= set(cache._rows)
    assert teacher.adapter.fine_tuned and teacher.adapter.keys.shape[0] == len(manifest.labeled)
    # raw_mean keys read views 0-1 from the teacher itself (a cache keeps normalised features only)
    cache = TeacherCache(base)
    fit_fewshot_teacher(cfg.override({"teacher.adapter_keys": "raw_mean"}), base, manifest, view_size=32, cache=cache)
    assert {f"{seed}/{path}#{v}" for path, _ in manifest.labeled for v in (2, 3, 4)} <= set(cache._rows)
    assert not any(f"{seed}/{path}#{v}" in cache._rows for path, _ in manifest.labeled for v in (0, 1))


def test_cli_train_with_a_teacher_file_for_other_classes_fails_in_one_line(tiny_cfg, tmp_path, capsys):
    write_teacher_file(tmp_path / "teacher.pt", classes=3, dim=64)  # the synthetic data has 4 classes
    code = main(["-q", "train", "--out", str(tmp_path / "run"), f"data.root={tiny_cfg.data.root}", "data.shots=2",
                 "student.image_size=32", "teacher.adapter=tip-f", f"teacher.adapter_file={tmp_path / 'teacher.pt'}"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("dho: error:") and "a teacher for 3 classes, this run has 4" in last


def test_raw_mean_keys_average_the_base_teachers_unnormalised_features(tiny_cfg):
    cfg = tiny_cfg.override({"teacher.adapter": "tip", "teacher.adapter_views": 3, "data.val_fraction": 0.2,
                             "teacher.adapter_keys": "raw_mean"})
    manifest = splits_for(cfg.data)
    base = build_teacher(cfg.teacher, manifest.classes)
    teacher = fit_fewshot_teacher(cfg, base, manifest, view_size=32)
    views = TrainViews(ImageStore(manifest, manifest.labeled), 32, cfg.optim.crop_scale, seed=cfg.seed + ADAPTER_SEED_OFFSET)
    raw = torch.stack([torch.stack([base.encode_image(base.preprocess(views[(i, v)][0][None]))[0] for i in range(len(views))])
                       for v in range(3)])  # [V, N, D]
    assert torch.allclose(teacher.adapter.keys, F.normalize(raw.mean(dim=0), dim=-1), atol=1e-5)
    normalised = fit_fewshot_teacher(cfg.override({"teacher.adapter_keys": "normalized_mean"}), base, manifest, view_size=32)
    assert torch.allclose(normalised.adapter.keys, F.normalize(F.normalize(raw, dim=-1).mean(dim=0), dim=-1), atol=1e-5)
    assert not torch.allclose(normalised.adapter.keys, teacher.adapter.keys, atol=1e-4)  # the rules differ here
