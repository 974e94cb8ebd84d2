import json
import os
import subprocess
import sys

import pytest
import torch

from dho.data import ImageStore, StreamSampler, TrainViews
from dho.data.splits import splits_for
from dho.device import resolve_precision
from dho.loop import train
from dho.training.batches import FeatureBatches, ImageBatches, RankSlice
from dho.training.plan import planned_views


def test_rank_slices_partition_every_global_batch():
    full = iter(StreamSampler(10, 8, seed=3, name="labeled"))
    ranks = [iter(RankSlice(StreamSampler(10, 8, seed=3, name="labeled"), r, 2)) for r in range(2)]
    for _ in range(5):
        batch = next(full)
        parts = [next(r) for r in ranks]
        assert sorted(parts[0] + parts[1]) == sorted(batch) and len(parts[0]) == len(parts[1]) == 4
    with pytest.raises(ValueError, match="divisible"):
        RankSlice(StreamSampler(10, 7, 0, "x"), 0, 2)


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    assert resolve_precision("auto", cpu) is None  # fp32 on every CPU, with or without bf16 units (measured)
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", cpu)


def test_bf16_autocast_run_trains(tiny_cfg):
    result = train(tiny_cfg.override({"precision": "bf16", "optim.epochs": 2}))
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in lines if "loss" in x)
    assert 0 <= result.results["test"]["mixed"] <= 1


def test_feature_batches_replay_the_image_batches_through_a_frozen_backbone(tiny_cfg):
    from dho.students import build_student

    cfg = tiny_cfg.override({"data.num_views": 2, "optim.epochs": 4})
    manifest = splits_for(cfg.data)
    student = build_student(cfg.student, manifest.classes).freeze_backbone()
    views = {name: TrainViews(ImageStore(manifest, manifest.split(name)), 32, cfg.optim.crop_scale, cfg.seed, num_views=2)
             for name in ("labeled", "unlabeled")}
    plan = planned_views(cfg, manifest)
    images = ImageBatches(views, 8, cfg.seed, torch.device("cpu"), None)
    feats = FeatureBatches(views, plan, 8, cfg.seed, torch.device("cpu"), student.embed, None, chunk=5)
    assert len(feats.features) == sum(len(p) for p in plan.values())
    for _ in range(4):
        a, b = next(images), next(feats)
        assert torch.equal(a.labels, b.labels) and a.num_labeled == b.num_labeled == 8
        assert torch.allclose(student.embed(a.inputs), b.inputs, atol=1e-5)


def test_heads_only_training_keeps_the_backbone(tiny_cfg):
    from dho.students import build_student

    cfg = tiny_cfg.override({"student.freeze_backbone": True, "data.num_views": 2, "optim.epochs": 10,
                             "eval.conflict_every": 2})
    result = train(cfg)
    torch.manual_seed(cfg.seed)
    fresh = build_student(cfg.student, result.student.classnames)
    for name, p in fresh.backbone.state_dict().items():
        assert torch.equal(p, result.student.backbone.state_dict()[name]), name
    assert not torch.equal(fresh.ce_head.weight, result.student.ce_head.weight)  # the heads trained
    assert not torch.equal(fresh.kd_head.weight, result.student.kd_head.weight)
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and not any("conflict" in x for x in lines)  # steps 1 and 10; no conflict
    assert result.results["selection"] == "validation grid"



def test_heads_only_features_are_kept_across_runs(tiny_cfg, tmp_path, monkeypatch):
    """student.feature_cache: a second heads-only run on the same views embeds nothing and trains
    the same weights bit for bit; another shot count embeds only its new views; another backbone
    (other weights) gets a store of its own."""
    from dho.students import DualHeadStudent

    embedded: list[int] = []
    real = DualHeadStudent.embed
    monkeypatch.setattr(DualHeadStudent, "embed", lambda self, images: embedded.append(len(images)) or real(self, images))
    cache = tmp_path / "features"
    cfg = tiny_cfg.override({"student.freeze_backbone": True, "data.num_views": 2, "optim.epochs": 6,
                             "student.feature_cache": str(cache)})
    first = train(cfg.override({"out": str(tmp_path / "a")}))
    views, embedded[:] = sum(embedded), []
    (store,) = cache.iterdir()
    assert views > 0 and json.loads((store / "meta.json").read_text())["dtype"] == "float32"
    again = train(cfg.override({"out": str(tmp_path / "b")}))
    assert embedded == []
    for (name, x), y in zip(first.student.state_dict().items(), again.student.state_dict().values()):
        assert torch.equal(x, y), name
    train(cfg.override({"data.shots": 3, "out": str(tmp_path / "c")}))
    assert 0 < sum(embedded) < views  # the views of the shots 2 already had are kept
    train(cfg.override({"seed": 1, "out": str(tmp_path / "d")}))  # another random backbone, other views
    assert len(list(cache.iterdir())) == 2


def test_heads_only_dho_skips_the_ce_head_on_unlabeled_rows_with_the_same_loss():
    """DHO reads h_CE on the labeled rows only: computing it there alone gives the same loss and
    gradients while the unlabeled rows (half the batch or more) skip that head."""
    from dho.config import LossConfig, StudentConfig
    from dho.losses import method_loss
    from dho.students import build_student
    from dho.teachers import TeacherOutput

    torch.manual_seed(0)
    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32), ["a", "b", "c"])
    features, labels = torch.randn(12, student.spec.num_features), torch.tensor([0, 1, 2, 0])
    teacher = TeacherOutput(torch.randn(12, 8), torch.randn(12, 3))
    grads = []
    for rows in (None, 4):
        student.zero_grad()
        out = student(features=features, ce_rows=rows)
        assert out.ce_logits.shape[0] == (12 if rows is None else 4) and out.kd_logits.shape[0] == 12
        losses = method_loss("dho", out, labels, teacher, 4, LossConfig())
        losses["loss"].backward()
        grads.append((losses["loss"].detach(), student.ce_head.weight.grad.clone(), student.kd_head.weight.grad.clone()))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


# Runs compared at each precision: fp32 on every CPU, bf16 autocast forced (emulated where the CPU
# lacks bf16 units), so that a machine without them still runs what `precision: auto` may pick.
# Tolerances: (teacher logits, student weights) where the two runs compute in other batch shapes.
PRECISION_TOLERANCE = {"fp32": (1e-5, 1e-4), "bf16": (5e-2, 1e-2)}


@pytest.mark.parametrize("precision", PRECISION_TOLERANCE)
def test_cache_teacher_store_replays_every_view_of_the_run(tiny_cfg, tmp_path, capsys, precision):
    from dho.cli.app import main
    from dho.config import save_config
    from dho.teachers import build_teacher
    from dho.teachers.store import TeacherStore

    logit_tol, weight_tol = PRECISION_TOLERANCE[precision]
    # crops at the student's 40 px (the larger input; the synthetic teacher reads 32 px)
    cfg = tiny_cfg.override({"data.num_views": 2, "optim.epochs": 6, "student.image_size": 40, "precision": precision})
    save_config(cfg, tmp_path / "run.yaml")
    store_dir = tmp_path / "store"
    assert main(["cache-teacher", "--config", str(tmp_path / "run.yaml"), "--out", str(store_dir), "--dtype", "float32",
                 "--workers", "1"]) == 0
    assert "train with teacher.cache=" in capsys.readouterr().out
    store = TeacherStore(store_dir)
    # stored outputs are the online teacher's on the regenerated views
    manifest = splits_for(cfg.data)
    teacher = build_teacher(cfg.teacher, manifest.classes)
    teacher.autocast_dtype = resolve_precision(precision, torch.device("cpu"))
    views = TrainViews(ImageStore(manifest, manifest.unlabeled), 40, cfg.optim.crop_scale, cfg.seed, num_views=2)
    keys = planned_views(cfg, manifest)["unlabeled"][:10]
    crops, _, names = zip(*(views[k] for k in keys))
    online = teacher(torch.stack(crops))
    assert torch.allclose(store.rows(list(names)).logits, online.logits, rtol=logit_tol, atol=logit_tol)
    assert store.meta["info"]["teacher_precision"] == precision
    # training reads the store: every teacher output replayed, the run equals the online one
    cached = train(cfg.override({"teacher.cache": str(store_dir), "out": str(tmp_path / "cached")}))
    plain = train(cfg.override({"out": str(tmp_path / "online")}))
    assert cached.results["teacher_cache"] == {"hits": 6 * 16, "misses": 0}
    diff = max(float((x.float() - y.float()).abs().max()) for x, y in
               zip(cached.student.state_dict().values(), plain.student.state_dict().values()))
    print(f"{precision}: max weight difference, store vs online teacher: {diff:.2e}")
    assert diff <= weight_tol
    with pytest.raises(ValueError, match="other views"):
        train(cfg.override({"teacher.cache": str(store_dir), "data.view_size": 24, "out": str(tmp_path / "bad")}))


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISION_TOLERANCE)
@pytest.mark.parametrize("extra", [[], ["loss.method=pcgrad"], ["student.freeze_backbone=true", "data.num_views=2"]],
                         ids=["dho", "pcgrad", "heads-only"])
def test_torchrun_two_processes_match_one_process(synth_root, tmp_path, extra, precision):
    """2 CPU processes (gloo) with the same global batch as 1 process: ranks in sync, same result
    (to rounding: each rank computes half the batch)."""
    weight_tol = PRECISION_TOLERANCE[precision][1]
    common = [f"data.root={synth_root}", "data.shots=2", "student.backbone=convnext_atto", "student.pretrained=false",
              "teacher.kind=synthetic", "student.image_size=32",
              "optim.epochs=4", "optim.batch_size=8", "eval.batch_size=16", "threads=1", "eval.teacher=false",
              f"precision={precision}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dho", "-q", "train", f"out={tmp_path / 'ddp'}", *common]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    single = train(__import__("dho").load_config(None, [*common, f"out={tmp_path / 'one'}"]))
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    sums = ddp["distributed"]["param_checksums"]
    assert ddp["distributed"]["world_size"] == 2 and sums[0] == sums[1]
    from dho.checkpoint import load_student
    from dho.training.distributed import param_checksum

    replica = load_student(tmp_path / "ddp" / "checkpoint")
    diff = max(float((x.float() - y.float()).abs().max())
               for x, y in zip(replica.state_dict().values(), single.student.state_dict().values()))
    print(f"{precision}: max weight difference, 2 processes vs 1: {diff:.2e}; checksums {sums[0]:.6f} vs "
          f"{param_checksum(single.student):.6f}")
    assert diff < weight_tol
    assert ddp["test"]["n"] == single.results["test"]["n"]  # every test image scored once
    if precision == "fp32":
        assert abs(sums[0] - param_checksum(single.student)) < 1e-3
        assert ddp["test"]["ce_head"] == single.results["test"]["ce_head"]


def test_device_crops_give_the_same_run(tiny_cfg, tmp_path):
    """Crops of images held on the training device are the loader's crops (the same run on the CPU)."""
    a = train(tiny_cfg.override({"optim.epochs": 3, "out": str(tmp_path / "a")}))
    b = train(tiny_cfg.override({"optim.epochs": 3, "data.device_crops": True, "out": str(tmp_path / "b")}))
    for (name, x), (_, y) in zip(a.student.state_dict().items(), b.student.state_dict().items()):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="in-memory"):
        ImageStore(splits_for(tiny_cfg.data), [], in_memory=False).to(torch.device("cpu"))


def test_images_kept_small_crop_the_same_in_the_store_the_adapter_and_training(tiny_cfg, tmp_path):
    """data.store_side: training images are kept with their shorter side at most that; the teacher
    store (computed in its own process), the few-shot adapter and the training streams crop the
    same kept images, so replayed outputs still equal online ones; a store kept at another side is refused."""
    from dho.training.precompute import cache_teacher

    cfg = tiny_cfg.override({"data.num_views": 2, "data.store_side": 24, "teacher.adapter": "tip", "out": str(tmp_path / "a")})
    manifest = splits_for(cfg.data)
    kept = ImageStore(manifest, manifest.labeled[:2], max_side=cfg.store_side(40))
    assert [tuple(kept.image(i).shape) for i in range(2)] == [(3, 24, 24)] * 2  # 32 x 32 synthetic images, kept at 24
    assert cfg.override({"data.store_side": "auto"}).store_side(40) == 80 and cfg.override({"data.store_side": None}).store_side(40) is None
    cache_teacher(cfg, tmp_path / "store", dtype="float32", workers=1)
    cached = train(cfg.override({"teacher.cache": str(tmp_path / "store")}))
    online = train(cfg.override({"out": str(tmp_path / "b")}))
    assert cached.results["teacher_cache"]["misses"] == 0
    for x, y in zip(cached.student.state_dict().values(), online.student.state_dict().values()):
        torch.testing.assert_close(x.float(), y.float(), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="store_side=24"):
        train(cfg.override({"teacher.cache": str(tmp_path / "store"), "data.store_side": 28, "out": str(tmp_path / "c")}))


def test_images_beyond_the_memory_budget_stream_from_disk_with_the_same_result(tiny_cfg, tmp_path, caplog):
    kept = train(tiny_cfg)
    with caplog.at_level("WARNING", logger="dho"):
        streamed = train(tiny_cfg.override({"data.memory_budget": 1e-12, "out": str(tmp_path / "streamed")}))
    assert "decoding them from disk at every use" in caplog.text
    for x, y in zip(kept.student.state_dict().values(), streamed.student.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
