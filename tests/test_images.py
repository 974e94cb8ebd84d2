import torch

from dho.data import ImageStore, StreamSampler, TrainViews, make_splits
from dho.data.images import apply_crop, crop_params, eval_view


def test_crops_replay_exactly_and_vary_with_epoch():
    a = crop_params(0, "train/cat/1.png", 3, 64, 48)
    assert a == crop_params(0, "train/cat/1.png", 3, 64, 48)
    others = {crop_params(0, "train/cat/1.png", e, 64, 48) for e in range(20)}
    assert len(others) > 10
    assert a.top >= 0 and a.top + a.height <= 64 and a.left >= 0 and a.left + a.width <= 48
    area = a.height * a.width / (64 * 48)
    assert 0.4 < area <= 1.0


def test_apply_crop_and_eval_view_shapes():
    img = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    out = apply_crop(img, crop_params(1, "x", 0, 40, 60), 24)
    assert out.shape == (3, 24, 24) and out.dtype == torch.uint8
    assert eval_view(img, 32).shape == (3, 32, 32)


def test_train_views_replay(synth_root):
    m = make_splits(synth_root, shots=2)
    views = TrainViews(ImageStore(m, m.labeled), 32, (0.5, 1.0), seed=7)
    lazy = TrainViews(ImageStore(m, m.labeled, in_memory=False), 32, (0.5, 1.0), seed=7)
    assert torch.equal(views[(3, 5)][0], lazy[(3, 5)][0])
    assert views[(3, 5)][2] == "7/" + views.store.sample_id(3) + "#5"  # seed / sample id # view
    replayed = TrainViews(views.store, 32, (0.5, 1.0), seed=7, num_views=2)
    assert torch.equal(replayed[(3, 5)][0], replayed[(3, 1)][0]) and replayed[(3, 5)][2].endswith("#1")
    assert not torch.equal(views[(3, 5)][0], views[(3, 6)][0])


def test_stream_sampler_covers_each_pass_and_resumes():
    s = StreamSampler(10, 4, seed=0, name="labeled")
    it = iter(s)
    batches = [next(it) for _ in range(5)]  # 20 keys = 2 passes
    keys = [k for b in batches for k in b]
    assert sorted(i for i, p in keys if p == 0) == list(range(10))
    assert sorted(i for i, p in keys if p == 1) == list(range(10))
    resumed = next(iter(StreamSampler(10, 4, seed=0, name="labeled", start_batch=3)))
    assert resumed == batches[3]
    small = next(iter(StreamSampler(3, 8, seed=0, name="x")))  # fewer items than the batch
    assert len(small) == 8
