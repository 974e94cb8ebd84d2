import pytest

from dho.config import ConfigError, RunConfig, load_config, save_config


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = RunConfig().override(["optim.lr=3e-4", "data.shots=null", "data.fraction=0.1", "optim.crop_scale=[0.3, 1.0]"])
    assert cfg.optim.lr == 3e-4 and cfg.data.shots is None and cfg.optim.crop_scale == (0.3, 1.0)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_overrides_are_coerced_to_field_types():
    cfg = RunConfig().override(["optim.epochs=5", "student.pretrained=true", "teacher.pretrained=openai", "seed=3"])
    assert cfg.optim.epochs == 5 and cfg.student.pretrained is True and cfg.teacher.pretrained == "openai"
    with pytest.raises(ConfigError, match="optim.epochs='five' must be an integer"):
        RunConfig().override(["optim.epochs=five"])


def test_unknown_keys_suggest_a_fix(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        RunConfig().override(["optim.lrr=1"])
    (tmp_path / "bad.yaml").write_text("teacher:\n  knd: openclip\n")
    with pytest.raises(ConfigError, match="did you mean 'teacher.kind'"):
        load_config(tmp_path / "bad.yaml")


def test_invalid_values_are_one_line_errors():
    for override, message in [
        ("loss.method=dhoo", "loss.method='dhoo' is not one of"),
        ("loss.kd_reduction=max", "kd_reduction"),
        ("eval.alpha=1.5", "eval.alpha=1.5 must be in"),
        ("optim", "not of the form key=value"),
        ("optim=3", "is a section"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            RunConfig().override([override])
        assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
