"""`dho data check` and `--skip-bad`: a zoo of corrupt and odd files, each decoded under a time limit."""

import json
import os
import shutil

import pytest

from conftest import write_image_zoo
from dho.cli.app import main
from dho.data.audit import audit_folder, inspect_files
from dho.loop import train


def _dataset(tmp_path, synth_root):
    """The synthetic tree plus the zoo in train/circle and a test image copied into train/square."""
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    expected = write_image_zoo(root / "train" / "circle")
    shutil.copy(root / "test" / "star" / "0000.png", root / "train" / "square" / "copy.png")
    (root / "train" / "empty_class").mkdir()
    return root, expected


def test_check_reports_bad_odd_empty_and_duplicates(synth_root, tmp_path, time_limit, capsys):
    time_limit(120)
    root, expected = _dataset(tmp_path, synth_root)
    report = audit_folder(root, timeout=20, workers=2)
    bad = {f["path"].split("/")[-1]: f["kind"] for f in report.bad}
    assert bad == {name: kind for name, kind in expected.items() if kind in ("empty", "truncated", "undecodable")}
    odd = {f["path"].split("/")[-1] for f in report.odd}
    assert odd == {name for name, kind in expected.items() if kind not in ("ok", "empty", "truncated", "undecodable")}
    assert report.problems == ["class 'empty_class' has no decodable images in train/"]
    assert report.cross_split_duplicates == [["test/star/0000.png", "train/square/copy.png"]]
    assert report.counts["test"]["star"] == 8 and not report.clean

    code = main(["data", "check", str(root), "--out", str(tmp_path / "out"), "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 1 and "bad: 4" in out and "train/circle/truncated.jpg" in out and "across splits" in out
    saved = json.loads((tmp_path / "out" / "data_check.json").read_text())
    assert saved["summary"]["bad"] == {"empty": 1, "truncated": 1, "undecodable": 2}


def test_a_file_that_never_finishes_cannot_hang_the_check(tmp_path, time_limit):
    time_limit(60)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it blocks forever: no writer will come
    write_image_zoo(tmp_path / "zoo")
    good = str(tmp_path / "zoo" / "plain.png")
    records = inspect_files([str(fifo), good, good], timeout=1.0, workers=1)
    assert records[0]["ok"] is False and records[0]["kind"] == "timeout"
    assert records[1]["ok"] and records[2]["ok"]  # the worker was replaced


def test_skip_bad_trains_without_bad_files_and_records_them(synth_root, tmp_path, tiny_cfg, time_limit):
    time_limit(180)
    root, expected = _dataset(tmp_path, synth_root)
    shutil.rmtree(root / "train" / "empty_class")
    cfg = tiny_cfg.override({"data.root": str(root), "optim.epochs": 1})
    with pytest.raises(ValueError, match="dho data check .*--skip-bad"):
        train(cfg)  # every training image is decoded up front (data.in_memory), the bad ones too
    result = train(cfg.override({"data.skip_bad": True}))
    recorded = json.loads((result.run_dir / "bad_files.json").read_text())
    assert sorted(r["path"].split("/")[-1] for r in recorded) == sorted(
        name for name, kind in expected.items() if kind in ("empty", "truncated", "undecodable"))
    splits = json.loads((result.run_dir / "splits.json").read_text())
    used = {p for key in ("labeled", "unlabeled", "val", "test") for p, _ in splits[key]}
    assert not used & {r["path"] for r in recorded} and "train/circle/alpha.png" in used


def test_huge_and_tiny_images_are_flagged_and_a_bomb_is_refused_in_one_line(synth_root, tmp_path, time_limit, capsys):
    """12000 x 12000 (144 million pixels, under Pillow's error limit) is refused from its header,
    with no DecompressionBombWarning; 6000 x 4500 and 20 x 20 are decoded with a note."""
    import warnings

    from PIL import Image

    from dho.data.decode import BadImage, open_rgb

    time_limit(120)
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    Image.new("1", (12000, 12000)).save(root / "train" / "circle" / "bomb.png")
    Image.new("L", (6000, 4500)).save(root / "train" / "circle" / "huge.png")
    Image.new("RGB", (20, 20)).save(root / "train" / "circle" / "tiny.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing leaks past the one-line error
        with pytest.raises(BadImage, match=r"12000 x 12000 = 144 million pixels, above the limit of 64 million") as info:
            open_rgb(root / "train" / "circle" / "bomb.png")
    assert info.value.kind == "too_large" and "\n" not in str(info.value)
    report = audit_folder(root, timeout=20, workers=2)
    assert {f["path"].split("/")[-1]: f["kind"] for f in report.bad} == {"bomb.png": "too_large"}
    notes = {f["path"].split("/")[-1]: [kind for kind, _ in f["notes"]] for f in report.odd}
    assert notes["huge.png"] == ["grayscale", "huge"] and notes["tiny.png"] == ["tiny"]
    assert report.summary()["odd"]["huge"] == 1 and not report.clean
