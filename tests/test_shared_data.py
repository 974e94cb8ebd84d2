"""Archives beside the checkout, unpacked once into the cache."""

import tarfile

import pytest

from dho.data.shared import find_shared_archive, prepare_shared


def _archive(tmp_path, members):
    src = tmp_path / "src"
    for rel in members:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    path = tmp_path / "caltech101.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / members[0].split("/")[0], arcname=members[0].split("/")[0])
    return path


def test_an_archive_is_unpacked_once(tmp_path, monkeypatch):
    archive = _archive(tmp_path, ["caltech-101/split_zhou_Caltech101.json", "caltech-101/101_ObjectCategories/ant/1.jpg"])
    monkeypatch.setenv("DHO_CALTECH101_ARCHIVE", str(archive))
    assert find_shared_archive("caltech101") == archive
    root = prepare_shared("caltech101", tmp_path / "cache")
    assert root == tmp_path / "cache" / "caltech-101" and (root / "101_ObjectCategories/ant/1.jpg").is_file()
    archive.unlink()  # the second call reads nothing
    assert prepare_shared("caltech101", tmp_path / "cache") == root


def test_a_wrong_or_missing_archive_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DHO_CALTECH101_ARCHIVE", str(_archive(tmp_path, ["other/file.txt"])))
    with pytest.raises(ValueError, match="does not hold caltech-101/split_zhou_Caltech101.json"):
        prepare_shared("caltech101", tmp_path / "cache")
    assert not list((tmp_path / "cache").glob(".*partial"))
    monkeypatch.setenv("DHO_CALTECH101_ARCHIVE", str(tmp_path / "missing.tar.gz"))
    with pytest.raises(FileNotFoundError, match="no caltech101.tar.gz found"):
        prepare_shared("caltech101", tmp_path / "cache2")
