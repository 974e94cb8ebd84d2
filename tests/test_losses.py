import math

import pytest
import torch
import torch.nn.functional as F

from dho.config import LossConfig
from dho.heads import HeadOutput
from dho.losses import binary_kd, binary_kl_norm, dho_loss, feature_kd, kd_kl, method_loss
from dho.methods import METHOD_SPECS
from dho.teachers import TeacherOutput


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_kl_closed_form():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    T = 2.0
    expected = T**2 * _kl(_softmax([0.0, 1.0]), _softmax([0.5, 0.0]))
    assert kd_kl(s, t, T).item() == pytest.approx(expected, rel=1e-6)


def test_kd_kl_zero_when_student_equals_teacher():
    x = torch.randn(5, 7)
    assert kd_kl(x, x, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_dho_loss_closed_form_both_reductions():
    # two labeled rows, one unlabeled row, two classes
    ce = torch.tensor([[2.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    kd = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    teacher = torch.tensor([[4.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    T = 2.0
    ce_expected = (-math.log(_softmax([2.0, 0.0])[0]) - math.log(0.5)) / 2
    kls = [T**2 * _kl(_softmax([t / T for t in tr]), _softmax([s / T for s in sr]))
           for sr, tr in zip(kd.tolist(), teacher.tolist())]
    out = dho_loss(ce, kd, labels, teacher, num_labeled=2)
    kd_sum = (kls[0] + kls[1]) / 2 + kls[2]  # batchmean(labeled) + batchmean(unlabeled)
    assert out["ce_loss"].item() == pytest.approx(ce_expected, rel=1e-6)
    assert out["kd_loss"].item() == pytest.approx(kd_sum, rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.5 * ce_expected + 0.5 * kd_sum, rel=1e-6)

    out = dho_loss(ce, kd, labels, teacher, num_labeled=2, kd_reduction="mean", ce_weight=0.3, kd_weight=0.7)
    kd_mean = sum(kls) / 3
    assert out["kd_loss"].item() == pytest.approx(kd_mean, rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.3 * ce_expected + 0.7 * kd_mean, rel=1e-6)


def test_dho_loss_gradients_reach_the_right_heads():
    ce = torch.randn(6, 3, requires_grad=True)
    kd = torch.randn(6, 3, requires_grad=True)
    out = dho_loss(ce, kd, torch.tensor([0, 1, 2]), torch.randn(6, 3), num_labeled=3)
    out["loss"].backward()
    assert ce.grad[3:].abs().sum() == 0  # CE sees labeled rows only
    assert ce.grad[:3].abs().sum() > 0
    assert (kd.grad.abs().sum(dim=1) > 0).all()  # KD sees every row


def test_dho_loss_rejects_bad_inputs():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="num_labeled"):
        dho_loss(x, x, torch.tensor([0]), x, num_labeled=2)
    with pytest.raises(ValueError, match="kd_reduction"):
        dho_loss(x, x, torch.tensor([0, 1]), x, num_labeled=2, kd_reduction="max")


def test_single_head_ce_kd_is_dho_loss_on_one_head():
    ce, kd, t = torch.randn(8, 5), torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.randint(0, 5, (4,))
    out = method_loss("ce_kd_logit", HeadOutput(torch.zeros(8, 2), ce, kd), labels, TeacherOutput(torch.zeros(8, 3), t), 4, LossConfig())
    ref = dho_loss(ce, ce, labels, t, num_labeled=4)
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-6)


def test_ce_and_kd_logit_methods():
    ce, t = torch.randn(6, 4), torch.randn(6, 4)
    labels = torch.tensor([1, 2])
    out = method_loss("ce", HeadOutput(torch.zeros(2, 2), ce[:2], ce[:2]), labels, None, 2, LossConfig())
    assert out["loss"].item() == pytest.approx(F.cross_entropy(ce[:2], labels).item(), rel=1e-6)
    out = method_loss("kd_logit", HeadOutput(torch.zeros(4, 2), ce[2:], ce[2:]), labels[:0], TeacherOutput(torch.zeros(4, 3), t[2:]), 0,
                      LossConfig())
    assert out["loss"].item() == pytest.approx(kd_kl(ce[2:], t[2:], 2.0).item(), rel=1e-6)


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_binary_kd_closed_form_and_zero_at_match():
    s, t, T = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.0]]), 2.0
    expected = 0.0
    for si, ti in ((1.0, 3.0), (-2.0, 0.0)):
        p, q = _sigmoid(ti / T), _sigmoid(si / T)
        expected += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert binary_kd(s, t, T).item() == pytest.approx(T**2 * expected, rel=1e-5)
    x = torch.randn(4, 6)
    assert binary_kd(x, x, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_kd_closed_form():
    teacher = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    projected = torch.tensor([[5.0, 0.0], [1.0, 0.0]])  # same direction; orthogonal
    assert feature_kd(projected, teacher, 1.5).item() == pytest.approx(1.5 * (0.0 + 2.0) / 2, rel=1e-6)


def _batch(n_l=3, n_u=5, c=4, d=6, dt=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = HeadOutput(torch.randn(n_l + n_u, d, generator=g), torch.randn(n_l + n_u, c, generator=g),
                     torch.randn(n_l + n_u, c, generator=g), torch.randn(n_l + n_u, dt, generator=g))
    teacher = TeacherOutput(F.normalize(torch.randn(n_l + n_u, dt, generator=g), dim=-1), torch.randn(n_l + n_u, c, generator=g))
    return out, teacher, torch.randint(0, c, (n_l,), generator=g)


def test_sskd_distils_the_kd_head_on_unlabeled_rows_only():
    out, teacher, labels = _batch()
    losses = method_loss("sskd", out, labels, teacher, 3, LossConfig())
    assert losses["kd_loss"].item() == pytest.approx(kd_kl(out.kd_logits[3:], teacher.logits[3:], 2.0).item(), rel=1e-6)
    assert losses["ce_loss"].item() == pytest.approx(F.cross_entropy(out.ce_logits[:3], labels).item(), rel=1e-6)


def _binary_kl_norm_reference(s, t, T, eps=1e-8):
    """DHKD's rule in float64: d = clamp(sigmoid((s - t) / T)), KLDiv(log d, 1/2) + KLDiv(log(1 - d), 1/2)."""
    d = torch.sigmoid((s.double() - t.double()) / T).clamp(eps, 1 - eps)
    half = torch.full_like(d, 0.5)
    kl = torch.nn.KLDivLoss(reduction="none")
    return T**2 * (kl(torch.log(d), half) + kl(torch.log(1 - d), 1 - half)).sum() / s.shape[0]


def test_binary_kl_norm_matches_the_kldivloss_rule_and_its_closed_form():
    s = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    t = torch.tensor([[3.0, 0.0, 0.5], [-4.0, 1.0, 2.0]])
    for T in (1.0, 2.0, 4.0):
        ref = _binary_kl_norm_reference(s, t, T).item()
        closed = T**2 / 2 * sum(math.log(math.cosh((a - b) / (2 * T))) for a, b in zip(s.flatten().tolist(), t.flatten().tolist()))
        assert ref == pytest.approx(closed, rel=1e-9)
        assert binary_kl_norm(s, t, T).item() == pytest.approx(ref, rel=1e-5)
        a, b = s.clone().requires_grad_(), s.double().requires_grad_()
        g_ours, = torch.autograd.grad(binary_kl_norm(a, t, T), a)
        g_ref, = torch.autograd.grad(_binary_kl_norm_reference(b, t, T), b)
        assert torch.allclose(g_ours.double(), g_ref, atol=1e-6)
    # far outside the clamp: the float64 rule saturates, ours too (and stays finite in float32)
    s, t = torch.tensor([[60.0, -60.0, 1.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    assert binary_kl_norm(s, t, 2.0).item() == pytest.approx(_binary_kl_norm_reference(s, t, 2.0).item(), rel=1e-5)
    x = torch.randn(4, 6)
    assert binary_kl_norm(x, x, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_dhkd_default_is_ce_on_h_ce_plus_binary_kl_norm_on_the_auxiliary_head():
    out, teacher, labels = _batch()
    ce_logits, kd_logits = out.ce_logits.requires_grad_(), out.kd_logits.requires_grad_()
    losses = method_loss("dhkd", out, labels, teacher, 3, LossConfig(ce_weight=0.3, kd_weight=0.7))
    ce = F.cross_entropy(ce_logits[:3], labels)
    aux = binary_kl_norm(kd_logits[:3], teacher.logits[:3], 2.0) + binary_kl_norm(kd_logits[3:], teacher.logits[3:], 2.0)
    assert losses["ce_loss"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert losses["kd_loss"].item() == pytest.approx(aux.item(), rel=1e-6)
    assert losses["loss"].item() == pytest.approx((0.3 * ce + 0.7 * aux).item(), rel=1e-6)
    assert "aux_loss" not in losses
    mean = method_loss("dhkd", out, labels, teacher, 3, LossConfig(kd_reduction="mean"))
    assert mean["kd_loss"].item() == pytest.approx(binary_kl_norm(kd_logits, teacher.logits, 2.0).item(), rel=1e-6)
    # h_CE gets only the CE gradient: none from the KD term, none on the unlabeled rows
    assert torch.autograd.grad(losses["kd_loss"], ce_logits, allow_unused=True)[0] is None
    g_total, = torch.autograd.grad(losses["loss"], ce_logits)
    g_ce, = torch.autograd.grad(0.3 * ce, ce_logits)
    assert torch.allclose(g_total, g_ce) and g_total[3:].abs().sum() == 0


def test_dhkd_main_head_kd_adds_binary_kd_on_the_auxiliary_head():
    out, teacher, labels = _batch()
    losses = method_loss("dhkd", out, labels, teacher, 3, LossConfig(dhkd="main_head_kd"))
    single = dho_loss(out.ce_logits, out.ce_logits, labels, teacher.logits, num_labeled=3)
    aux = binary_kd(out.kd_logits[:3], teacher.logits[:3], 2.0) + binary_kd(out.kd_logits[3:], teacher.logits[3:], 2.0)
    assert losses["aux_loss"].item() == pytest.approx(aux.item(), rel=1e-6)
    assert losses["loss"].item() == pytest.approx((single["loss"] + 0.5 * aux).item(), rel=1e-6)


def test_feature_methods_use_the_projection_and_default_weight():
    out, teacher, labels = _batch()
    w = math.log(4) / 2
    kd_only = method_loss("kd_feature", out, labels, teacher, 3, LossConfig())
    assert kd_only["loss"].item() == pytest.approx(feature_kd(out.projected[3:], teacher.features[3:], w).item(), rel=1e-6)
    both = method_loss("ce_kd_feature", out, labels, teacher, 3, LossConfig(kd_reduction="mean", feature_weight=2.0))
    expected = 0.5 * F.cross_entropy(out.ce_logits[:3], labels) + 0.5 * feature_kd(out.projected, teacher.features, 2.0)
    assert both["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_pcgrad_loss_terms_equal_single_head_ce_kd():
    out, teacher, labels = _batch()
    a = method_loss("pcgrad", out, labels, teacher, 3, LossConfig())
    b = method_loss("ce_kd_logit", out, labels, teacher, 3, LossConfig())
    assert all(torch.equal(a[k], b[k]) for k in ("loss", "ce_loss", "kd_loss"))
    assert METHOD_SPECS["pcgrad"].pcgrad and not METHOD_SPECS["ce_kd_logit"].pcgrad


def test_every_method_has_a_spec_and_a_finite_loss():
    import typing

    from dho.methods import METHODS

    out, teacher, labels = _batch()
    for method in METHODS:
        losses = method_loss(method, out, labels, teacher, 3, LossConfig())
        assert torch.isfinite(losses["loss"]) and {"loss", "ce_loss", "kd_loss"} <= set(losses), method
    # the config's choices (its annotation) are the registry's names
    assert typing.get_args(typing.get_type_hints(LossConfig)["method"]) == METHODS
