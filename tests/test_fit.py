import csv
import json
import shutil

from dho.cli.app import main

FAST = ["teacher.kind=synthetic", "student.backbone=resnet18", "student.pretrained=false", "student.image_size=32",
        "optim.batch_size=8", "eval.batch_size=64", "threads=2"]


def test_fit_checks_trains_chooses_and_ships(synth_root, tmp_path, capsys):
    """Labeled class folders + a flat unlabeled folder (with a broken file) -> DHO-F and CE trained,
    the better on validation exported with its card, per-class table and confusion plot."""
    pool = tmp_path / "pool"
    pool.mkdir()
    for i, image in enumerate(sorted((synth_root / "test").rglob("*.png"))):
        shutil.copy(image, pool / f"{i:04d}.png")
    (pool / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "fit"
    code = main(["fit", str(synth_root / "train"), "--unlabeled", str(pool), "--out", str(out), "--test",
                 str(synth_root / "test"), "--steps", "4", *FAST])
    printed = capsys.readouterr().out
    assert code == 0 and "shipped" in printed and "on --test" in printed
    report = json.loads((out / "fit.json").read_text())
    assert report["data"]["unlabeled"] == 32 and report["data"]["bad_unlabeled"] == 1
    assert set(report["val"]) >= {"dho-f", "ce"} and report["chosen"] in report["val"]
    assert report["chosen"] == max(report["val"], key=report["val"].get)
    assert (out / "unlabeled.txt").read_text().count("\n") == 32  # the broken file left out
    model = out / "export" / ("model.onnx" if report["files"]["model"].endswith(".onnx") else "model.pt")
    assert model.is_file() and (out / "confusion.png").stat().st_size > 0
    card = (out / "export" / "model.md").read_text()
    assert "## How it was chosen (`dho fit`)" in card and f"{report['chosen']} (shipped)" in card
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["class"] for r in rows] == ["circle", "square", "star", "triangle"]
    assert sum(int(r["images"]) for r in rows) == 32  # scored on the --test images
    results = json.loads((out / "dho-f" / "results.json").read_text())
    assert results["teacher"].endswith("+tip-adapter-f")  # DHO-F: the few-shot teacher


def test_fit_without_a_pool_is_a_one_line_error(synth_root, tmp_path, capsys):
    code = main(["fit", str(synth_root / "train"), "--out", str(tmp_path / "fit")])
    assert code == 1 and "--unlabeled" in capsys.readouterr().err


def test_the_input_size_follows_the_images(tmp_path):
    from PIL import Image

    from dho.experiments.fit import input_size_for

    for side, expected in ((32, 64), (48, 96), (500, 128)):
        folder = tmp_path / str(side) / "cls"
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (side + 40, side)).save(folder / f"{i}.png")
        assert input_size_for(tmp_path / str(side)) == expected


def test_suggest_ranks_the_pool_class_balanced_without_near_duplicates(synth_root, tmp_path, capsys):
    """dho suggest on a trained run: N picks, no two copies of one image; the CSV and the contact
    sheet written."""
    import torch

    from dho.experiments.suggest import pick_balanced

    pool = tmp_path / "pool"
    pool.mkdir()
    images = sorted((synth_root / "test").rglob("*.png"))
    for i, image in enumerate(images):
        shutil.copy(image, pool / f"{i:04d}.png")
        shutil.copy(image, pool / f"{i:04d}-copy.png")  # an exact duplicate of each
    out = tmp_path / "fit"
    assert main(["fit", str(synth_root / "train"), "--unlabeled", str(synth_root / "test"), "--out", str(out),
                 "--steps", "4", *FAST]) == 0
    capsys.readouterr()
    code = main(["suggest", str(out / "dho-f"), "--unlabeled", str(pool), "--n", "12"])
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((out / "dho-f" / "suggest" / "suggestions.csv").open()))
    assert code == 0 and "12 images to label next" in printed and len(rows) == 12
    stems = [r["path"].rsplit("/", 1)[-1].replace("-copy", "") for r in rows]
    assert len(set(stems)) == 12  # never an image and its copy
    assert (out / "dho-f" / "suggest" / "suggestions.png").stat().st_size > 0
    # the picking rule on its own: best first per class, classes in turn, duplicates skipped
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    predicted = torch.tensor([0, 0, 1, 1, 0])
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, -0.6]])
    assert pick_balanced(scores, predicted, features, 4) == [0, 2, 4, 3]
