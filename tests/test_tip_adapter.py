import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dho.teachers.tip_adapter import (
    A_STEPS, DEFAULT_B_GRID, SCALAR_FIELDS, TENSOR_FIELDS, TipAdapter, build_cache, default_a_grid,
    fine_tune_keys, fit_tip_adapter, search_ab,
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
    keys, values = build_cache(views, torch.tensor([2, 0]), num_classes=3)
    r = 1 / math.sqrt(2)
    assert torch.allclose(keys, torch.tensor([[r, r], [0.0, -1.0]]))
    assert torch.equal(values, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))


def test_default_grids():
    assert len(A_STEPS) == 25 and A_STEPS[0] == 0.0
    assert A_STEPS[1] == pytest.approx(0.01) and A_STEPS[-1] == pytest.approx(10.0)
    assert all(x < y for x, y in zip(A_STEPS, A_STEPS[1:]))
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
        tuned = fine_tune_keys(train_feats, train_zs, labels, keys, values, a=1.0, b=5.0, batch_size=8, seed=0)
    again = fine_tune_keys(train_feats, train_zs, labels, keys, values, a=1.0, b=5.0, batch_size=8, seed=0)
    other = fine_tune_keys(train_feats, train_zs, labels, keys, values, a=1.0, b=5.0, batch_size=8, seed=1)
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
