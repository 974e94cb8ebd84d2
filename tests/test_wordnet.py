"""WordNet's noun hierarchy on a tiny hand-made database in WordNet's own file format, and the
bridge rows it gives the imagenet-bridge teacher."""

import logging

import pytest
import torch

from dho.teachers.imagenet_bridge import ImageNetBridgeTeacher, hierarchy_bridge
from dho.teachers.wordnet import NounHierarchy, find_wordnet, kinds_of

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by\n  2 Princeton University\n"
# offset lex ss_type w_cnt (hex) words... p_cnt pointers... | gloss
SYNSETS = {
    1000: (["entity"], []),
    1100: (["animal"], [1000]),
    1200: (["dog", "domestic_dog"], [1100]),
    1210: (["dalmatian", "coach_dog"], [1200]),
    1220: (["pug"], [1200]),
    1300: (["cat", "true_cat"], [1100]),
    1310: (["tabby"], [1300]),
    1400: (["bass"], [1000]),  # the voice
    1500: (["bass", "sea_bass"], [1100]),  # the fish
    1510: (["striped_bass"], [1500]),
    1600: (["ceiling_fan"], [1000]),
    1700: (["wildcat"], [1300]),
    1800: (["car", "automobile"], [1000]),
    1810: (["cab", "taxi"], [1800, 1900]),  # two parents: a car and a hired vehicle
    1900: (["truck"], [1000]),
}


def write_wordnet(folder):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    index: dict[str, list[int]] = {}
    for offset, (words, parents) in SYNSETS.items():
        pointers = " ".join(f"@ {p:08d} n 0000" for p in parents)
        lines.append(f"{offset:08d} 05 n {len(words):02x} " + " ".join(f"{w} 0" for w in words)
                     + f" {len(parents):03d} {pointers} | gloss of {words[0]}\n")
        for w in words:
            index.setdefault(w, []).append(offset)
    (folder / "data.noun").write_text("".join(lines))
    (folder / "index.noun").write_text(HEADER + "".join(
        f"{w} n {len(o)} 1 @ {len(o)} 0 " + " ".join(f"{x:08d}" for x in o) + "\n" for w, o in sorted(index.items())))
    (folder / "noun.exc").write_text("mice mouse\n")
    return folder


@pytest.fixture
def hierarchy(tmp_path):
    return NounHierarchy.load(write_wordnet(tmp_path / "wordnet"))


def test_the_hierarchy_reads_wordnets_files(hierarchy):
    assert hierarchy.ancestors(1210) == {1210, 1200, 1100, 1000}
    assert hierarchy.ancestors(1810) == {1810, 1800, 1900, 1000}
    assert hierarchy.lemma_synsets("dog") == (1200,)
    assert hierarchy.lemma_synsets("bass") == (1400, 1500)  # most frequent sense first


def test_class_names_find_their_lemmas(hierarchy):
    assert hierarchy.lemma_synsets("ceiling fan") == hierarchy.lemma_synsets("ceiling_fan") == (1600,)
    assert hierarchy.lemma_synsets("dogs") == (1200,)  # singular
    assert hierarchy.lemma_synsets("wild_cat") == (1700,)  # run together
    assert hierarchy.lemma_synsets("car_side") == (1800,)  # its first word
    assert hierarchy.lemma_synsets("Dalmatian") == (1210,)
    assert hierarchy.lemma_synsets("spaceship") == ()


def test_kinds_of_a_task_class(hierarchy):
    wnids = ["n00001210", "n00001220", "n00001310", "n00001510", "n00001810", "n00001600"]
    first = kinds_of(hierarchy, wnids, ["dog", "cat", "bass", "truck", "car"], senses="first")
    assert first.tolist() == [[True, False, False, False, False],  # dalmatian
                              [True, False, False, False, False],  # pug
                              [False, True, False, False, False],  # tabby
                              [False, False, False, False, False],  # striped bass: bass's first sense is the voice
                              [False, False, False, True, True],  # cab: a car and a truck here
                              [False, False, False, False, False]]
    every = kinds_of(hierarchy, wnids, ["dog", "cat", "bass", "truck", "car"], senses="all")
    assert every[3].tolist() == [False, False, True, False, False]
    with pytest.raises(ValueError, match="senses"):
        kinds_of(hierarchy, wnids, ["dog"], senses="some")


def test_the_hierarchy_sends_covered_imagenet_classes_to_their_task_class():
    text = torch.full((4, 3), 0.25)
    kinds = torch.tensor([[True, False, False], [False, False, False], [True, True, False], [False, False, True]])
    bridge = hierarchy_bridge(text, kinds)
    rows = torch.tensor([[1.0, 0.0, 0.0], [0.25, 0.25, 0.25], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(bridge, rows / rows.sum(0))  # then every column sums to 1 again
    torch.testing.assert_close(bridge.sum(0), torch.ones(3))


def test_wordnet_is_found_by_directory_or_environment(tmp_path, monkeypatch):
    folder = write_wordnet(tmp_path / "wn")
    assert find_wordnet(folder) == folder
    assert find_wordnet(tmp_path / "none") is None
    monkeypatch.setenv("DHO_WORDNET", str(folder))
    assert find_wordnet() == folder


def test_a_missing_wordnet_falls_back_with_one_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("dho.teachers.wordnet.WORDNET_DIRS", ())
    monkeypatch.delenv("DHO_WORDNET", raising=False)
    with caplog.at_level(logging.WARNING):
        assert ImageNetBridgeTeacher._hierarchy("first", tmp_path / "nothing") == ("off", None)
    assert len(caplog.records) == 1 and "WordNet's noun files not found" in caplog.records[0].getMessage()
    chosen, found = ImageNetBridgeTeacher._hierarchy("all", write_wordnet(tmp_path / "wn"))
    assert chosen == "all" and found is not None and found.lemma_synsets("pug") == (1220,)


@pytest.mark.skipif(find_wordnet() is None, reason="WordNet's noun files are not on this machine")
def test_every_imagenet_class_is_in_the_installed_wordnet():
    from dho.teachers.imagenet_bridge import imagenet_wnids

    pytest.importorskip("timm")
    real = NounHierarchy.load(find_wordnet())
    wnids = imagenet_wnids()
    assert all(int(w[1:]) in real.hypernyms for w in wnids)
    kinds = kinds_of(real, wnids, ["dog", "truck", "dalmatian"], senses="all")
    assert kinds[:, 0].sum() >= 100  # the dog breeds
    assert kinds[wnids.index("n02110341"), 2]  # ImageNet's dalmatian is a dalmatian
    assert kinds[wnids.index("n03930630"), 1]  # a pickup is a truck
    # the most frequent noun sense of "dalmatian" is a person from Dalmatia, not the dog
    assert not kinds_of(real, wnids, ["dalmatian"], senses="first").any()
