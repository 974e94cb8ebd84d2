import tarfile

import pytest

from dho.data.cifar import CIFAR10_CLASSES, prepare_cifar10


def _fake_archive(path, with_test=True):
    from PIL import Image

    src = path.parent / "src"
    for split in ("train", "test") if with_test else ("train",):
        for name in CIFAR10_CLASSES:
            folder = src / "cifar10" / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (32, 32), (10, 20, 30)).save(folder / "0000.jpg")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "cifar10", arcname="cifar10")
    return path


def test_prepare_unpacks_once(tmp_path):
    archive = _fake_archive(tmp_path / "c.tar.gz")
    root = prepare_cifar10(tmp_path / "cache", archive)
    assert (root / "test" / "truck" / "0000.jpg").is_file()
    archive.unlink()  # the cache is used from now on
    assert prepare_cifar10(tmp_path / "cache") == root


def test_incomplete_archive_is_an_error(tmp_path):
    archive = _fake_archive(tmp_path / "c.tar.gz", with_test=False)
    with pytest.raises(ValueError, match="does not hold"):
        prepare_cifar10(tmp_path / "cache", archive)
