import pytest
import torch
from torch import nn

from dho.gradients import gradient_conflict, pcgrad_backward
from dho.heads import HeadOutput
from dho.teachers import TeacherOutput


def test_pcgrad_projects_out_the_conflicting_component():
    w = nn.Parameter(torch.zeros(2))
    # gradients g1 = (1, 0), g2 = (-1, 1): dot -1 < 0
    l1, l2 = w @ torch.tensor([1.0, 0.0]), w @ torch.tensor([-1.0, 1.0])
    cos = pcgrad_backward([l1, l2], [w])
    g1 = torch.tensor([1.0, 0.0]) - (-1.0 / 2.0) * torch.tensor([-1.0, 1.0])  # (0.5, 0.5)
    g2 = torch.tensor([-1.0, 1.0]) - (-1.0 / 1.0) * torch.tensor([1.0, 0.0])  # (0, 1)
    assert torch.allclose(w.grad, g1 + g2)
    assert cos == pytest.approx(-1 / 2**0.5, rel=1e-6)


def test_pcgrad_sums_when_gradients_agree():
    w = nn.Parameter(torch.zeros(3))
    l1, l2 = w @ torch.tensor([1.0, 2.0, 0.0]), w @ torch.tensor([0.5, 0.0, 1.0])
    pcgrad_backward([l1, l2], [w])
    assert torch.allclose(w.grad, torch.tensor([1.5, 2.0, 1.0]))


def _toy(shared_head: bool):
    torch.manual_seed(0)
    backbone, head_a, head_b = nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(3, 2)
    x = torch.randn(6, 4)
    z = backbone(x)
    ce_logits = head_a(z)
    kd_logits = ce_logits if shared_head else head_b(z)
    labels = torch.tensor([0, 1, 0])
    teacher = TeacherOutput(torch.zeros(6, 3), torch.randn(6, 2))
    ce = nn.functional.cross_entropy(ce_logits[:3], labels)
    kd = nn.functional.kl_div(kd_logits.log_softmax(-1), teacher.logits.log_softmax(-1), reduction="batchmean", log_target=True)
    return backbone, HeadOutput(z, ce_logits, kd_logits), {"loss": ce + kd, "ce_loss": ce, "kd_loss": kd}, labels, teacher


def test_gradient_conflict_matches_a_direct_computation_and_keeps_the_graph():
    backbone, out, losses, labels, teacher = _toy(shared_head=True)
    record = gradient_conflict(backbone, out, losses, labels, teacher, 3)
    g_ce = torch.cat([g.flatten() for g in torch.autograd.grad(losses["ce_loss"], list(backbone.parameters()), retain_graph=True)])
    g_kd = torch.cat([g.flatten() for g in torch.autograd.grad(losses["kd_loss"], list(backbone.parameters()), retain_graph=True)])
    assert record["cos_params"] == pytest.approx(float(torch.cosine_similarity(g_ce, g_kd, dim=0)), abs=1e-5)
    p = out.ce_logits[:3].detach().softmax(-1)
    y = nn.functional.one_hot(labels, 2).float()
    expected = float(((p - y) * (p - teacher.logits[:3].softmax(-1))).sum(-1).mean())
    assert record["pred_term"] == pytest.approx(expected, abs=1e-5)
    losses["loss"].backward()  # the graph survived the measurement
    assert backbone.weight.grad is not None


def test_gradient_conflict_is_none_without_both_terms():
    backbone, out, losses, labels, teacher = _toy(shared_head=False)
    losses["kd_loss"] = torch.zeros(())
    assert gradient_conflict(backbone, out, losses, labels, teacher, 3) is None
