import dataclasses
import json

import numpy as np
import pytest
import torch

from dho.teachers import TeacherOutput, build_teacher
from dho.teachers.cache import TeacherCache
from dho.teachers.store import MISSING_LOGIT, TeacherStore


def _outputs(n: int, d: int = 6, c: int = 5, seed: int = 0) -> TeacherOutput:
    gen = torch.Generator().manual_seed(seed)
    return TeacherOutput(torch.randn(n, d, generator=gen), 10 * torch.randn(n, c, generator=gen))


def test_store_round_trip_in_both_precisions(tmp_path):
    out = _outputs(7)
    keys = [f"0/img{i}.png#0" for i in range(7)]
    for dtype, exact in (("float32", lambda x: x), ("float16", lambda x: x.half().float())):
        store = TeacherStore.create(tmp_path / dtype, "t", 6, 5, dtype=dtype)
        assert store.append(keys, out) == 7
        back = TeacherStore(tmp_path / dtype).rows(list(reversed(keys)))
        assert torch.equal(back.features, exact(out.features).flip(0))
        assert torch.equal(back.logits, exact(out.logits).flip(0))


def test_store_appends_shards_and_skips_known_keys(tmp_path):
    store = TeacherStore.create(tmp_path / "s", "t", 6, 5, dtype="float32")
    a, b = _outputs(4, seed=1), _outputs(4, seed=2)
    store.append(["k0", "k1", "k2", "k3"], a)
    assert store.append(["k2", "k3", "k4", "k4"], b) == 1  # k2, k3 known; k4 once
    reopened = TeacherStore(tmp_path / "s")
    assert len(reopened) == 5 and len(reopened.meta["shards"]) == 2
    rows = reopened.rows(["k4", "k0", "k3"])
    assert torch.equal(rows.logits, torch.stack([b.logits[2], a.logits[0], a.logits[3]]))
    with pytest.raises(KeyError, match="not in"):
        reopened.rows(["k9"])
    with pytest.raises(FileExistsError):
        TeacherStore.create(tmp_path / "s", "t", 6, 5)


def test_store_is_memory_mapped_and_ignores_unlisted_shards(tmp_path):
    store = TeacherStore.create(tmp_path / "s", "t", 6, 5, dtype="float16")
    store.append(["a", "b"], _outputs(2))
    assert isinstance(store._arrays[0]["features"], np.memmap)
    # a shard whose writing stopped before meta.json named it is invisible
    np.save(tmp_path / "s" / "features-00001.npy", np.zeros((3, 6), np.float16))
    assert len(TeacherStore(tmp_path / "s")) == 2
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["dtype"] == "float16"


def test_topk_store_keeps_the_teachers_distribution_on_its_best_classes(tmp_path):
    out = _outputs(3, c=8)
    store = TeacherStore.create(tmp_path / "k", "t", 6, 8, dtype="float32", topk=3)
    store.append(["a", "b", "c"], out)
    back = store.rows(["a", "b", "c"])
    top = out.logits.topk(3, dim=-1)
    assert torch.equal(back.logits.gather(1, top.indices), top.values)
    assert (back.logits == MISSING_LOGIT).sum() == 3 * 5
    p = back.logits.softmax(-1)  # the softmax restricted to the top 3; the rest exactly 0
    assert torch.allclose(p.gather(1, top.indices), top.values.softmax(-1), rtol=1e-6, atol=0)
    assert (p[back.logits == MISSING_LOGIT] == 0).all()
    assert torch.equal(back.logits.argmax(-1), out.logits.argmax(-1))


def test_cache_saves_into_a_store_and_replays_at_its_precision(tmp_path, tiny_cfg):
    from dho.data.splits import splits_for

    teacher = build_teacher(tiny_cfg.teacher, splits_for(tiny_cfg.data).classes)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    ab, cd = teacher(images[:2]), teacher(images[2:])  # the batches the cache will compute
    cache = TeacherCache(teacher)
    cache.outputs(images[:2], ["a", "b"])
    cache.save(tmp_path / "s", dtype="float16")
    assert len(cache) == 2 and cache.store is not None
    both = cache.outputs(images, ["a", "b", "c", "d"])  # a, b from disk; c, d computed and kept in memory
    assert cache.misses == 4 and torch.equal(both.logits[2:], cd.logits)
    assert torch.equal(both.logits[:2], ab.logits.half().float())
    cache.save(tmp_path / "s")
    replay = TeacherCache.load(teacher, tmp_path / "s").outputs(torch.zeros_like(images), ["d", "a"])
    assert torch.equal(replay.features, torch.stack([cd.features[1], ab.features[0]]).half().float())
    with pytest.raises(ValueError, match="save it there"):
        cache.save(tmp_path / "elsewhere")


def test_a_store_answers_only_for_its_classes_and_prompts(tmp_path, tiny_cfg):
    from dho.data.splits import splits_for

    classes = splits_for(tiny_cfg.data).classes
    teacher = build_teacher(tiny_cfg.teacher, classes)
    cache = TeacherCache(teacher)
    cache.outputs(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), ["a", "b"])
    cache.save(tmp_path / "s")
    assert TeacherStore(tmp_path / "s").meta["classes"] == classes
    reordered = build_teacher(tiny_cfg.teacher, classes[::-1])
    with pytest.raises(ValueError, match="other classes"):
        TeacherCache.load(reordered, tmp_path / "s")
    prompts = build_teacher(dataclasses.replace(tiny_cfg.teacher, templates="a {}.|the {}."), classes)
    with pytest.raises(ValueError, match="other prompt templates"):
        TeacherCache.load(prompts, tmp_path / "s")


def test_shards_of_cache_teacher_fill_one_store_at_once(tmp_path, tiny_cfg):
    """`dho cache-teacher --shard I/N`: N processes at once (nodes over shared storage, here two on
    one machine) append their parts to one store under its lock; together they hold exactly what
    one unsharded run stores, with the same outputs."""
    import subprocess
    import sys

    from dho.config import save_config

    config = tmp_path / "run.yaml"
    save_config(tiny_cfg.override({"data.num_views": 2}), config)
    base = [sys.executable, "-m", "dho", "-q", "cache-teacher", "--config", str(config), "--dtype", "float32", "--workers", "1"]
    parts = [subprocess.Popen([*base, "--out", str(tmp_path / "sharded"), "--shard", f"{i}/2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for part in parts:
        _, err = part.communicate(timeout=300)
        assert part.returncode == 0, err[-2000:]
    whole = subprocess.run([*base, "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    sharded, one = TeacherStore(tmp_path / "sharded"), TeacherStore(tmp_path / "whole")
    assert len(sharded.meta["shards"]) == 2 and set(sharded.index) == set(one.index) and len(one) > 0
    keys = sorted(one.index)
    a, b = sharded.rows(keys), one.rows(keys)
    assert torch.equal(a.features, b.features) and torch.equal(a.logits, b.logits)
    bad = subprocess.run([*base, "--out", str(tmp_path / "x"), "--shard", "2/2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "I must be in 0..N-1" in bad.stderr
