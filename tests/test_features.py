import importlib
import json

import pytest
import torch

from dho.experiments.features import _balanced_subsample, extract_features, linear_eval, linear_eval_run, tsne_plot, tsne_run
from dho.students import build_student

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def blobs(n_per_class: int, centres: torch.Tensor, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(n_per_class)
    return centres[labels] + noise * torch.randn(len(labels), centres.shape[1], generator=gen), labels


@pytest.fixture(scope="module")
def separable():
    centres = 4.0 * torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    return (*blobs(40, centres, 1.0, seed=1), *blobs(25, centres, 1.0, seed=2))


def test_linear_eval_separates_gaussian_blobs(separable):
    result = linear_eval(*separable, num_classes=8)
    assert result["top1"] >= 0.95 and result["train_top1"] >= 0.95
    assert result["top1"] <= result["top5"] <= 1.0 and result["top5_k"] == 5
    assert (result["n_train"], result["n_test"], result["dim"]) == (320, 200, 64)


def test_linear_eval_is_about_chance_on_random_labels():
    gen = torch.Generator().manual_seed(3)
    x_train, x_test = torch.randn(400, 32, generator=gen), torch.randn(800, 32, generator=gen)
    y_train, y_test = torch.randint(0, 4, (400,), generator=gen), torch.randint(0, 4, (800,), generator=gen)
    result = linear_eval(x_train, y_train, x_test, y_test, num_classes=4)
    assert abs(result["top1"] - 0.25) < 0.07  # 0.07 is about 4.5 binomial standard deviations
    assert result["train_top1"] > 0.3  # while it did fit some of the training noise


def test_linear_eval_is_deterministic_and_scale_free(separable):
    x_train, y_train, x_test, y_test = separable
    a = linear_eval(x_train, y_train, x_test, y_test, num_classes=8, seed=5)
    b = linear_eval(x_train, y_train, x_test, y_test, num_classes=8, seed=5)
    assert a == b
    # standardisation with the training statistics removes a per-dimension affine change of units
    scale, shift = torch.logspace(-3, 3, 64), torch.linspace(-50, 50, 64)
    c = linear_eval(x_train * scale + shift, y_train, x_test * scale + shift, y_test, num_classes=8, seed=5)
    assert c["top1"] == pytest.approx(a["top1"], abs=0.01)


def test_top5_counts_the_true_label_among_the_five_best():
    # one-dimensional features: no linear classifier ranks 10 ordered classes perfectly by top-1
    centres = torch.arange(10, dtype=torch.float32)[:, None]
    result = linear_eval(*blobs(30, centres, 0.8, 0), *blobs(30, centres, 0.8, 1), num_classes=10)
    assert result["top1"] < 0.9 and result["top5"] > result["top1"] + 0.1


def test_extract_features_uses_eval_mode_and_restores_training(tiny_cfg):
    torch.manual_seed(0)
    student = build_student(tiny_cfg.student, ["a", "b", "c"])
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    views = [(images[i], i % 3) for i in range(10)]
    bn_before = {k: v.clone() for k, v in student.state_dict().items() if "running_mean" in k}
    student.train()
    feats, labels = extract_features(student, views, batch_size=4)
    assert feats.shape == (10, student.spec.num_features) and feats.dtype == torch.float32
    assert labels.tolist() == [i % 3 for i in range(10)]
    assert student.training
    for k, v in student.state_dict().items():
        if k in bn_before:
            assert torch.equal(v, bn_before[k]), k  # no BatchNorm statistics were updated
    student.eval()
    with torch.no_grad():
        expected = student(images).features
    assert torch.allclose(feats, expected, atol=1e-5)


def test_balanced_subsample_keeps_small_classes_whole():
    labels = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(10, dtype=torch.long), torch.full((50,), 2)])
    pick = _balanced_subsample(labels, 40, seed=0)
    assert torch.bincount(labels[pick]).tolist() == [15, 10, 15]
    assert torch.equal(pick, _balanced_subsample(labels, 40, seed=0))
    assert not torch.equal(pick, _balanced_subsample(labels, 40, seed=1))
    assert torch.equal(_balanced_subsample(labels, 1000), torch.arange(160))


def test_tsne_plot_writes_a_png(tmp_path):
    centres = 5.0 * torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    feats, labels = blobs(10, centres, 1.0, seed=0)
    path = tsne_plot(feats, labels, ["w", "x", "y", "z"], tmp_path / "plots" / "tsne.png")
    assert path == tmp_path / "plots" / "tsne.png"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_linear_eval_and_tsne_of_a_trained_run(tiny_cfg, one_thread):
    run = importlib.import_module("dho.loop").train(tiny_cfg.override({"threads": 1})).run_dir
    splits = json.loads((run / "splits.json").read_text())
    result = linear_eval_run(run, batch_size=16)
    assert json.loads((run / "linear_eval.json").read_text()) == result
    assert result["n_train"] == len(splits["labeled"]) + len(splits["unlabeled"]) == 88
    assert result["n_test"] == len(splits["test"]) == 32
    assert result["num_classes"] == 4 and result["dim"] == 512 and result["input_size"] == 32
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0 and result["top5_k"] == 4
    assert linear_eval_run(run / "checkpoint", batch_size=16) == result  # the checkpoint dir works too
    path = tsne_run(run)
    assert path == run / "tsne_test.png" and path.read_bytes()[:8] == PNG_MAGIC
