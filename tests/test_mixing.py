import pytest
import torch

from dho.mixing import DEFAULT_ALPHAS, DEFAULT_BETAS, mix_probs, mixing_grid, search_mixing


def test_alpha_one_and_zero_reduce_to_one_head():
    ce, kd = torch.randn(10, 6), torch.randn(10, 6)
    assert torch.allclose(mix_probs(ce, kd, 1.0, 0.7), ce.softmax(-1))
    assert torch.allclose(mix_probs(ce, kd, 0.0, 0.7), (kd / 0.7).softmax(-1))
    mixed = mix_probs(ce, kd, 0.3, 2.0)
    assert torch.allclose(mixed.sum(-1), torch.ones(10))


def test_default_grid_is_the_authors():
    assert DEFAULT_ALPHAS[0] == 0.0 and DEFAULT_ALPHAS[-1] == 1.0 and len(DEFAULT_ALPHAS) == 21
    assert DEFAULT_BETAS == (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0)


def test_grid_matches_a_loop():
    gen = torch.Generator().manual_seed(0)
    ce, kd = torch.randn(300, 5, generator=gen), torch.randn(300, 5, generator=gen)
    y = torch.randint(0, 5, (300,), generator=gen)
    grid = mixing_grid(ce, kd, y, max_elements=2000)  # forces chunking
    for bi, b in enumerate(DEFAULT_BETAS):
        for ai, a in enumerate(DEFAULT_ALPHAS):
            acc = (mix_probs(ce, kd, a, b).argmax(-1) == y).double().mean().item()
            assert grid[bi, ai].item() == pytest.approx(acc)


def test_search_finds_a_planted_optimum():
    # CE head right on the first half, KD head right on the second half. The CE head is
    # confident where right and nearly uniform elsewhere; the KD head's logits have a fixed
    # margin, so only an intermediate alpha with a sharpening beta gets everything right.
    n, c = 200, 4
    y = torch.arange(n) % c
    wrong = (y + 1) % c
    ce = torch.zeros(n, c)
    kd = torch.zeros(n, c)
    ce[:100].scatter_(1, y[:100, None], 3.0)
    ce[100:].scatter_(1, wrong[100:, None], 0.2)
    kd[:100].scatter_(1, wrong[:100, None], 0.5)
    kd[100:].scatter_(1, y[100:, None], 1.0)
    best = search_mixing(ce, kd, y)
    assert best.accuracy == 1.0
    assert 0.0 < best.alpha < 1.0
    grid = mixing_grid(ce, kd, y)
    assert grid[:, 0].max() < 1.0 and grid[:, -1].max() < 1.0  # neither head alone gets there


def _authors_search(ce, kd, y, alphas, betas):
    """The authors' search (train_others.py, after f74da67) as a plain loop: beta in list order,
    then alpha upward; the first strict improvement over the best so far is kept."""
    best_acc, best_alpha, best_beta = 0.0, 0.0, 1.0
    for beta in betas:
        p_kd = (kd / beta).softmax(-1)
        for alpha in sorted(alphas):
            probs = alpha * ce.softmax(-1) + (1 - alpha) * p_kd
            acc = float((probs.argmax(-1) == y).float().mean())
            if acc > best_acc:
                best_acc, best_alpha, best_beta = acc, alpha, beta
    return best_alpha, best_beta, best_acc


def test_ties_keep_the_authors_first_best():
    # identical heads: every grid point scores the same; the authors' loop keeps its first
    # point: the first beta and alpha = 0 (all weight on the KD head).
    ce = torch.randn(50, 3)
    y = ce.argmax(-1)
    best = search_mixing(ce, ce, y)
    assert (best.alpha, best.beta, best.accuracy) == (0.0, 0.5, 1.0)
    best = search_mixing(ce, ce, y, alphas=[0.6, 0.2], betas=[3.0, 1.0])  # alphas in any order, betas as given
    assert (best.alpha, best.beta) == (0.2, 3.0)
    # few rows, many ties: the same choice as the reference loop on every draw
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        ce, kd = torch.randn(12, 4, generator=gen), torch.randn(12, 4, generator=gen)
        y = torch.randint(0, 4, (12,), generator=gen)
        got = search_mixing(ce, kd, y)
        alpha, beta, acc = _authors_search(ce, kd, y, DEFAULT_ALPHAS, DEFAULT_BETAS)
        assert (got.alpha, got.beta) == (alpha, beta) and abs(got.accuracy - acc) < 1e-6


def test_search_returns_three_fields():
    alpha, beta, acc = search_mixing(torch.randn(20, 3), torch.randn(20, 3), torch.randint(0, 3, (20,)))
    assert 0 <= alpha <= 1 and beta in DEFAULT_BETAS and 0 <= acc <= 1


def test_alpha_without_validation_data_follows_the_paper():
    from dho.config import RunConfig
    from dho.mixing import default_alpha

    assert default_alpha(RunConfig()) == 0.2  # teacher.adapter=auto: the few-shot teacher where shots exist
    cfg = RunConfig().override({"teacher.adapter": "none"})
    assert default_alpha(cfg) == 0.4  # zero-shot teacher
    assert default_alpha(cfg.override({"teacher.adapter": "tip-f"})) == 0.2  # few-shot teacher
    assert default_alpha(cfg.override({"data.shots": None, "data.fraction": 0.01})) == 0.5  # low-shot
    assert default_alpha(cfg.override({"teacher.adapter": "tip", "eval.alpha": 0.7})) == 0.7  # set by the user
