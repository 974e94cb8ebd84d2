"""The decode policy: bad files are reported, odd ones converted as documented in dho.data.decode."""

import numpy as np
import pytest
from PIL import Image

from dho.data.decode import BadImage, decode_bytes, inspect_file, open_rgb
from dho.data.images import decode_image


def test_every_file_of_the_zoo_is_decoded_or_reported(image_zoo):
    folder, expected = image_zoo
    for name, kind in expected.items():
        record = inspect_file(str(folder / name))
        if kind in ("empty", "truncated", "undecodable"):
            assert not record["ok"] and record["kind"] == kind, (name, record)
            continue
        assert record["ok"], (name, record)
        assert kind == "ok" or kind in {k for k, _ in record["notes"]}, (name, record)
        assert decode_image(folder / name).shape[0] == 3


def test_bad_files_raise_one_clear_error(image_zoo):
    folder, _ = image_zoo
    for name, kind in [("empty.jpg", "empty"), ("truncated.jpg", "truncated"), ("text.jpg", "undecodable")]:
        with pytest.raises(BadImage, match=name) as info:
            open_rgb(folder / name)
        assert info.value.kind == kind and "\n" not in str(info.value)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # transparent red -> white
    rgba[0, 1] = (0, 0, 0, 255)  # opaque black stays black
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    pixels, _ = open_rgb(tmp_path / "a.png")
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[0, 1].tolist() == [0, 0, 0]
    assert 125 <= pixels[1, 0, 0] <= 129


def test_sixteen_bit_values_are_scaled_and_exif_rotation_applied(tmp_path):
    Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16)).save(tmp_path / "g.png")
    pixels, notes = open_rgb(tmp_path / "g.png")
    assert pixels[0, :, 0].tolist() == [0, 100, 255] and notes[0][0] == "high_bit_depth"
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "r.jpg", exif=exif)
    assert open_rgb(tmp_path / "r.jpg")[0].shape == (40, 20, 3)  # shown upright: 20 wide, 40 high


def test_decode_bytes_of_nothing():
    with pytest.raises(BadImage, match="empty file"):
        decode_bytes(b"")


def _noise_png(tmp_path, side=1500):
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def test_a_decode_past_the_time_limit_is_stopped_and_the_timer_given_back(tmp_path):
    import signal

    data = _noise_png(tmp_path).read_bytes()
    with pytest.raises(BadImage, match="not decoded within 0.001 s") as err:
        decode_bytes(data, "noise.png", limit=0.001)  # the timer stops Pillow mid-decode
    assert err.value.kind == "timeout"
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert decode_bytes(data, limit=None)[0].shape == (1500, 1500, 3)


def test_the_time_limit_holds_where_no_timer_can_be_set(tmp_path):
    import threading

    data, found = _noise_png(tmp_path, 600).read_bytes(), []

    def decode():
        try:
            decode_bytes(data, limit=1e-9)
        except BadImage as err:
            found.append(err.kind)
    thread = threading.Thread(target=decode)  # not the main thread: checked once the decode ends
    thread.start()
    thread.join()
    assert found == ["timeout"]


def test_training_reads_images_under_the_same_time_limit(tmp_path, monkeypatch):
    import dho.data.decode as decode

    path = _noise_png(tmp_path, 64)
    clock = iter(range(0, 10_000, 100))  # every clock reading 100 s after the last
    monkeypatch.setattr(decode, "monotonic", lambda: float(next(clock)))
    with pytest.raises(BadImage, match=f"noise.png: not decoded within {decode.DECODE_SECONDS:g} s"):
        decode_image(path)
