import json

import pytest
import torch

from dho.checkpoint import load_student
from dho.loop import train


def test_dho_run_writes_a_self_describing_directory(tiny_cfg):
    result = train(tiny_cfg)
    run = result.run_dir
    for name in ("config.yaml", "metrics.jsonl", "splits.json", "results.json", "checkpoint/model.safetensors", "checkpoint/model.json"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["selection"] == "validation grid" and results["steps"] == 6
    for key in ("ce_head", "kd_head", "mixed", "teacher"):
        assert 0.0 <= results["test"][key] <= 1.0
    assert sum(results["test"]["agreement"].values()) == results["test"]["n"] == 32
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 1 and {"loss", "ce_loss", "kd_loss", "lr"} <= set(lines[0])
    student = load_student(run / "checkpoint")
    assert (student.alpha, student.beta) == (results["alpha"], results["beta"])


def test_training_is_reproducible(tiny_cfg, tmp_path):
    a = train(tiny_cfg.override({"out": str(tmp_path / "a")}))
    b = train(tiny_cfg.override({"out": str(tmp_path / "b")}))
    for (name, x), (_, y) in zip(a.student.state_dict().items(), b.student.state_dict().items()):
        assert torch.equal(x, y), name
    assert a.results["test"] == b.results["test"]


@pytest.mark.parametrize("method", ["ce", "kd_logit", "ce_kd_logit"])
def test_single_head_methods_train(tiny_cfg, method):
    result = train(tiny_cfg.override({"loss.method": method, "optim.epochs": 2}))
    assert result.results["selection"] == "single head" and result.results["alpha"] == 1.0
    assert result.results["test"]["mixed"] == result.results["test"]["ce_head"]
    assert result.student.kd_head is None


def test_keep_best_and_unlabeled_epochs(tiny_cfg):
    cfg = tiny_cfg.override({"optim.epoch_mode": "unlabeled", "optim.epochs": 2, "eval.eval_every": 1,
                             "eval.keep": "best", "optim.schedule": "cosine"})
    result = train(cfg)
    assert result.results["steps"] == 2 * (len(json.loads((result.run_dir / "splits.json").read_text())["unlabeled"]) // 8)
    assert result.results["epochs_kept"] in (1, 2)
    evals = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert len(evals) == 2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16 autocast forced, even where it is emulated
def test_cached_teacher_outputs_equal_online(tiny_cfg, tmp_path, precision):
    from dho.teachers import build_teacher
    from dho.teachers.cache import TeacherCache

    cfg = tiny_cfg.override({"data.num_views": 2, "optim.epochs": 8, "precision": precision})
    online = train(cfg.override({"out": str(tmp_path / "online")}))
    teacher = build_teacher(cfg.teacher, online.student.classnames)
    cache = TeacherCache(teacher)
    first = train(cfg.override({"out": str(tmp_path / "c1")}), teacher=teacher, teacher_cache=cache)
    misses = cache.misses
    second = train(cfg.override({"out": str(tmp_path / "c2"), "loss.method": "ce_kd_logit"}), teacher=teacher, teacher_cache=cache)
    for (name, x), (_, y) in zip(online.student.state_dict().items(), first.student.state_dict().items()):
        assert torch.equal(x, y), name
    assert cache.hits > 0 and cache.misses == misses  # the second method replayed every view
    assert misses <= 2 * (8 + 80)  # at most num_views distinct views per training image
    assert second.results["test"]["ce_head"] >= 0


def test_planned_views_cover_every_view_a_run_draws(tiny_cfg):
    from dho.data import ImageStore, TrainViews
    from dho.data.splits import splits_for
    from dho.teachers import build_teacher
    from dho.teachers.cache import TeacherCache
    from dho.training.plan import planned_views

    cfg = tiny_cfg.override({"data.num_views": 3, "optim.epochs": 5})
    manifest = splits_for(cfg.data)
    teacher = build_teacher(cfg.teacher, manifest.classes)
    cache = TeacherCache(teacher)
    for split, keys in planned_views(cfg, manifest).items():
        views = TrainViews(ImageStore(manifest, manifest.split(split)), 32, cfg.optim.crop_scale, cfg.seed, num_views=3)
        crops, _, names = zip(*(views[k] for k in keys))
        cache.logits(torch.stack(crops), list(names))
    computed = cache.misses
    train(cfg, teacher=teacher, teacher_cache=cache)
    assert cache.misses == computed and cache.hits == 5 * 16  # 5 steps of 8 labeled + 8 unlabeled


@pytest.mark.parametrize("method", ["kd_feature", "ce_kd_feature", "sskd", "dhkd", "pcgrad"])
def test_baseline_methods_train_and_predict_as_specified(tiny_cfg, method):
    from dho.checkpoint import load_student
    from dho.methods import METHOD_SPECS

    spec = METHOD_SPECS[method]
    result = train(tiny_cfg.override({"loss.method": method, "optim.epochs": 2}))
    r = result.results
    assert r["alpha"] == 1.0 and r["test"]["mixed"] == r["test"]["ce_head"]  # none of them mixes
    assert (result.student.kd_head is not None) == spec.dual_head
    assert (result.student.projector is not None) == spec.projector
    reloaded = load_student(result.run_dir / "checkpoint")
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(reloaded.predict(images).probs, result.student.predict(images).probs, atol=1e-6)


def test_pcgrad_equals_plain_sum_when_gradients_never_conflict(tiny_cfg):
    # with the KD weight at zero there is nothing to project: PCGrad must reproduce ce_kd_logit exactly
    cfg = tiny_cfg.override({"optim.epochs": 2, "loss.kd_weight": 0.0})
    a = train(cfg.override({"loss.method": "pcgrad", "out": cfg.out + "_a"}))
    b = train(cfg.override({"loss.method": "ce_kd_logit", "out": cfg.out + "_b"}))
    for (name, x), (_, y) in zip(a.student.state_dict().items(), b.student.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), name


def test_few_shot_teacher_is_fitted_and_described(tiny_cfg):
    result = train(tiny_cfg.override({"teacher.adapter": "tip-f", "teacher.adapter_epochs": 2, "optim.epochs": 2,
                                      "data.val_fraction": 0.2}))
    assert result.results["teacher"].endswith("+tip-adapter-f")
    assert 0.0 <= result.results["test"]["teacher"] <= 1.0
