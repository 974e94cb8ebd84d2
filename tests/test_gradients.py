import pytest
import torch
from torch import nn

from dho.config import LossConfig
from dho.gradients import gradient_conflict, pcgrad_backward
from dho.heads import HeadOutput
from dho.losses import kd_kl, method_loss
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


def test_batch_gradient_conflict_matches_a_direct_computation_and_keeps_the_graph():
    backbone, out, losses, labels, teacher = _toy(shared_head=True)
    record = gradient_conflict(backbone, out, losses, labels, teacher, 3, mode="batch")
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


def _tiny_student(method: str, n_l: int = 4, n_u: int = 3, seed: int = 0):
    """A backbone with BatchNorm (rows coupled), two heads, losses from method_loss (kd_reduction=sum)."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 4))
    head_ce, head_kd = nn.Linear(4, 3), nn.Linear(4, 3)
    z = backbone(torch.randn(n_l + n_u, 5))
    ce_logits = head_ce(z)
    out = HeadOutput(z, ce_logits, head_kd(z) if method == "dho" else ce_logits)
    teacher = TeacherOutput(torch.zeros(n_l + n_u, 2), 3 * torch.randn(n_l + n_u, 3))
    labels = torch.randint(0, 3, (n_l,))
    return backbone, out, method_loss(method, out, labels, teacher, n_l, LossConfig()), labels, teacher


def _per_sample_reference(backbone, out, labels, teacher, rows):
    """A plain loop: each labeled image's own CE and KD terms, differentiated one at a time."""
    params = list(backbone.parameters())
    cos_z, cos_theta = [], []
    for i in rows:
        ce_i = nn.functional.cross_entropy(out.ce_logits[i:i + 1], labels[i:i + 1])
        kd_i = kd_kl(out.kd_logits[i:i + 1], teacher.logits[i:i + 1], 2.0)
        gz_ce, = torch.autograd.grad(ce_i, out.features, retain_graph=True)
        gz_kd, = torch.autograd.grad(kd_i, out.features, retain_graph=True)
        cos_z.append(float(torch.cosine_similarity(gz_ce[i], gz_kd[i], dim=0)))
        g_ce = torch.cat([g.flatten() for g in torch.autograd.grad(ce_i, params, retain_graph=True)])
        g_kd = torch.cat([g.flatten() for g in torch.autograd.grad(kd_i, params, retain_graph=True)])
        cos_theta.append(float(torch.cosine_similarity(g_ce, g_kd, dim=0)))
    return sum(cos_z) / len(cos_z), sum(cos_theta) / len(cos_theta)


@pytest.mark.parametrize("method", ["dho", "ce_kd_logit"])
def test_per_sample_gradient_conflict_matches_a_loop_over_labeled_images(method):
    backbone, out, losses, labels, teacher = _tiny_student(method)
    record = gradient_conflict(backbone, out, losses, labels, teacher, 4, max_samples=None)
    cos_z, cos_theta = _per_sample_reference(backbone, out, labels, teacher, range(4))
    assert record["cos_features"] == pytest.approx(cos_z, abs=1e-5)
    assert record["cos_params"] == pytest.approx(cos_theta, abs=1e-5)
    capped = gradient_conflict(backbone, out, losses, labels, teacher, 4, max_samples=2)
    assert capped["cos_params"] == pytest.approx(_per_sample_reference(backbone, out, labels, teacher, range(2))[1], abs=1e-5)
    assert capped["cos_features"] == record["cos_features"]  # features: always every labeled image
    batch = gradient_conflict(backbone, out, losses, labels, teacher, 4, mode="batch")
    assert batch["cos_params"] != pytest.approx(record["cos_params"], abs=1e-3)  # a different measure
    losses["loss"].backward()  # the graph survived the measurement
    assert backbone[0].weight.grad is not None


def test_per_sample_gradient_conflict_is_none_where_kd_skips_the_labeled_images():
    backbone, out, _, labels, teacher = _tiny_student("dho")
    losses = method_loss("sskd", out, labels, teacher, 4, LossConfig())  # KD on the unlabeled rows only
    record = gradient_conflict(backbone, out, losses, labels, teacher, 4)
    assert record["cos_features"] is None and record["cos_params"] is None
    assert gradient_conflict(backbone, out, losses, labels, teacher, 4, mode="batch")["cos_params"] is not None
