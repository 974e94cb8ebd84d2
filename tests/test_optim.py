import pytest

from dho.training.optim import lr_factor


def test_linear_warmup_then_linear_decay():
    total, warm = 100, 10
    assert lr_factor(0, total, "linear_warmup", warm) == 0.0
    assert lr_factor(5, total, "linear_warmup", warm) == 0.5
    assert lr_factor(10, total, "linear_warmup", warm) == 1.0
    assert lr_factor(55, total, "linear_warmup", warm) == pytest.approx(0.5)
    assert lr_factor(100, total, "linear_warmup", warm) == 0.0


def test_cosine_and_warmup_cosine():
    assert lr_factor(0, 100, "cosine", 0) == 1.0
    assert lr_factor(50, 100, "cosine", 0) == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine", 0) == pytest.approx(0.0)
    assert lr_factor(10, 110, "warmup_cosine", 10) == 1.0
    assert lr_factor(60, 110, "warmup_cosine", 10) == pytest.approx(0.5)
