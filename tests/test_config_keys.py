"""`dho config`: every key with its default, type and description, read from the dataclasses."""

import pytest

from dho.cli.app import main
from dho.config import RunConfig, load_config
from dho.config_keys import config_keys


def test_every_key_is_listed_with_its_default_and_a_description():
    keys = {k.key: k for k in config_keys()}
    flat = {}

    def walk(d, prefix=""):
        for name, value in d.items():
            walk(value, f"{prefix}{name}.") if isinstance(value, dict) else flat.setdefault(f"{prefix}{name}", value)

    walk(RunConfig().to_dict())
    assert set(keys) == set(flat)
    assert [k for k, doc in keys.items() if not doc.doc] == []  # a new field needs its comment
    assert keys["data.shots"].default == 16 and keys["data.shots"].type == "int | all | null"
    assert keys["data.duplicates"].type == "warn | error | off"
    assert "labeled images per class" in keys["data.shots"].doc


def test_dho_config_prints_one_section(capsys):
    assert main(["config", "--section", "optim"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("optim.") for line in lines) and len(lines) == len(config_keys("optim"))
    assert any(line.startswith("optim.lr = 0.001") and "(float)" in line for line in lines)
    assert main(["config", "--section", "optimiser"]) == 1
    assert "no config section 'optimiser'; sections: data, eval, loss, optim, student, teacher" in capsys.readouterr().err


def test_yaml_words_that_are_choices_stay_choices(tmp_path):
    """YAML 1.1 reads off / on / no / yes as booleans; a field whose choices include the word gets it."""
    assert load_config(None, ["data.duplicates=off"]).data.duplicates == "off"
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  duplicates: off\n  in_memory: off\n")
    cfg = load_config(path)
    assert cfg.data.duplicates == "off" and cfg.data.in_memory is False
    with pytest.raises(ValueError, match="data.small_classes=False is not one of error, drop, take_all"):
        load_config(None, ["data.small_classes=off"])
