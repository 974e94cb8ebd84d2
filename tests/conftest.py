"""Tiny fakes shared by the tests: a synthetic ImageFolder tree and a seconds-long run config."""

from __future__ import annotations

import io
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dho.config import RunConfig
from dho.data import make_synthetic_folder

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """train/ (24 per class) and test/ (8 per class) for 4 classes of 32x32 PNGs."""
    return make_synthetic_folder(tmp_path_factory.mktemp("synth"), per_class={"train": 24, "test": 8}, seed=0)


@pytest.fixture
def tiny_cfg(synth_root, tmp_path) -> RunConfig:
    """A DHO run that takes a few seconds: resnet18 at 32 px, synthetic teacher, 6 steps."""
    return RunConfig().override({
        "data.root": str(synth_root), "data.shots": 2, "student.backbone": "resnet18", "student.image_size": 32,
        "optim.epochs": 6, "optim.batch_size": 8, "eval.batch_size": 64, "out": str(tmp_path / "run"), "threads": 2,
        "teacher.adapter": "none",  # the zero-shot teacher; the few-shot teacher's tests ask for theirs
        "teacher.kind": "synthetic", "student.pretrained": False,  # fakes for speed; the defaults are real ones
    })


@pytest.fixture
def time_limit():
    """``time_limit(seconds)`` makes the test fail, rather than hang, once it runs that long."""
    def arm(seconds: float) -> None:
        def expire(signum, frame):
            raise TimeoutError(f"the test ran longer than {seconds} s")

        signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)


def write_image_zoo(folder: Path) -> dict[str, str]:
    """Corrupt and odd image files in ``folder``: name -> what the decode policy must say (bad kind or note kind)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    expected = {}

    def save(name, image, kind, **kw):
        image.save(folder / name, **kw)
        expected[name] = kind

    save("plain.png", noise, "ok")
    (folder / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = "empty"
    buf = io.BytesIO()
    noise.save(buf, format="JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expected["truncated.jpg"] = "truncated"
    (folder / "noise.png").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    expected["noise.png"] = "undecodable"
    (folder / "text.jpg").write_text("not an image at all\n")
    expected["text.jpg"] = "undecodable"
    save("cmyk.jpg", noise.convert("CMYK"), "cmyk")
    save("gray16.png", Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 21), "high_bit_depth")
    rgba = noise.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 48).astype(np.uint8), (64, 1))))
    save("alpha.png", rgba, "alpha")
    save("gray_alpha.png", rgba.convert("LA"), "alpha")
    palette = noise.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette_transparent.png", palette, "palette_transparency", transparency=0)
    save("gray.jpg", noise.convert("L"), "grayscale")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    save("rotated.jpg", noise, "exif_rotation", exif=exif)
    frames = [noise.convert("P"), noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    expected["animated.gif"] = "multi_frame"
    return expected


@pytest.fixture
def image_zoo(tmp_path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "zoo"
    return folder, write_image_zoo(folder)


def write_png(path: Path, seed: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_coop_tree(root: Path, per_class: dict[str, int] | None = None,
                    classes: tuple[str, ...] = ("banded", "braided", "cracked"), dataset: str = "dtd") -> Path:
    """A tiny CoOp-layout dataset (DTD by default): ``root/<folder>/<images>/<class>/<n>.png`` and
    its ``split_zhou_<Name>.json``; returns ``root``."""
    import json

    from dho.data.benchmarks import DATASETS

    bench = DATASETS[dataset]
    per_class = per_class or {"train": 6, "val": 3, "test": 2}
    base = root / bench.folder
    split: dict[str, list] = {k: [] for k in per_class}
    n = 0
    for label, name in enumerate(classes):
        for key, count in per_class.items():
            for i in range(count):
                rel = f"{name}/{name}_{key}_{i:02d}.png"
                write_png(base / bench.images / rel, n)
                split[key].append([rel, label, name])
                n += 1
    (base / bench.split_file).write_text(json.dumps(split))
    return root


def write_fgvc_tree(root: Path, variants: tuple[str, ...] = ("707-320", "A300B4", "Cessna 172"),
                    per_class: dict[str, int] | None = None) -> Path:
    """A tiny FGVC-Aircraft: ``images/<id>.jpg`` (PNG bytes are fine for the decoder),
    ``variants.txt`` and ``images_variant_{train,val,test}.txt``; returns the dataset directory."""
    per_class = per_class or {"train": 4, "val": 2, "test": 2}
    base = root / "fgvc_aircraft"
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    n = 0
    for key, count in per_class.items():
        lines = []
        for v in variants:
            for _ in range(count):
                image_id = f"{1000000 + n:07d}"
                write_png(base / "images" / f"{image_id}.jpg", n)
                lines.append(f"{image_id} {v}")
                n += 1
        (base / f"images_variant_{key}.txt").write_text("\n".join(lines) + "\n")
    return base


def write_imagenet_tree(root: Path, wnids: tuple[str, ...] = ("n01440764", "n01443537", "n01484850"),
                        names: tuple[str, ...] = ("tench", "goldfish", "great white shark"),
                        per_class: dict[str, int] | None = None) -> Path:
    """A tiny ImageNet: ``train/<wnid>/<wnid>_<n>.JPEG``, ``val/<wnid>/...`` and ``classnames.txt``."""
    per_class = per_class or {"train": 10, "val": 2}
    n = 0
    for key, count in per_class.items():
        for w in wnids:
            for i in range(count):
                write_png(root / key / w / f"{w}_{key}{i}.JPEG", n)
                n += 1
    (root / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in zip(wnids, names)))
    return root


TINY_CLIP = {"embed_dim": 16, "quick_gelu": True,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture
def tiny_clip(tmp_path_factory):
    """A tiny open_clip architecture (16-d embeddings, 32 px) registered as 'dho-tiny-clip'."""
    import json

    import open_clip

    folder = tmp_path_factory.mktemp("clip-configs")
    (folder / "dho-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder)
    return "dho-tiny-clip"


def sigterm_at_step(monkeypatch, call: int) -> None:
    """SIGTERM arrives while the loss of training step ``call`` is computed (a real signal, in
    this process); every later step computes as usual."""
    import importlib

    train_module = importlib.import_module("dho.loop")  # the training loop module
    real, calls = train_module.method_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "method_loss", loss)
