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
