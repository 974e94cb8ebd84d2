import math

import pytest
import torch
import torch.nn.functional as F

from dho.config import LossConfig
from dho.heads import HeadOutput
from dho.losses import dho_loss, kd_kl, method_loss


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
    out = method_loss("ce_kd_logit", HeadOutput(torch.zeros(8, 2), ce, kd), labels, t, 4, LossConfig())
    ref = dho_loss(ce, ce, labels, t, num_labeled=4)
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-6)


def test_ce_and_kd_logit_methods():
    ce, t = torch.randn(6, 4), torch.randn(6, 4)
    labels = torch.tensor([1, 2])
    out = method_loss("ce", HeadOutput(torch.zeros(2, 2), ce[:2], ce[:2]), labels, None, 2, LossConfig())
    assert out["loss"].item() == pytest.approx(F.cross_entropy(ce[:2], labels).item(), rel=1e-6)
    out = method_loss("kd_logit", HeadOutput(torch.zeros(4, 2), ce[2:], ce[2:]), labels[:0], t[2:], 0, LossConfig())
    assert out["loss"].item() == pytest.approx(kd_kl(ce[2:], t[2:], 2.0).item(), rel=1e-6)
