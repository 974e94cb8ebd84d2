import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def test_enum_typos_suggest_the_value_and_text_fields_keep_their_text():
    with pytest.raises(ConfigError, match=r"loss.method='dh' is not one of .* \(did you mean 'dho'\?\)"):
        RunConfig().override(["loss.method=dh"])
    cfg = RunConfig().override(["teacher.model=1e5", "teacher.pretrained=null", "out=runs/007"])
    assert (cfg.teacher.model, cfg.teacher.pretrained, cfg.out) == ("1e5", None, "runs/007")
    for override, message in [("optim.lr=.nan", "must be a finite number"), ("optim.lr=1" + "0" * 400, "must be a number"),
                              ("device=gpu", "device='gpu' is not one of"), ("optim.betas=[0.9, 1.5]", r"optim.betas\[1\]"),
                              ("eval.batch_size=0", "eval.batch_size=0 must be > 0"), ("threads=0", "threads=0"),
                              ("student.pretrained=yes please", "must be true or false")]:
        with pytest.raises(ConfigError, match=message):
            RunConfig().override([override])


# ---- properties ---------------------------------------------------------------------------------



def _leaves(d: dict, prefix: str = "") -> list[str]:
    return [k for key, v in d.items() for k in (_leaves(v, f"{prefix}{key}.") if isinstance(v, dict) else [prefix + key])]


LEAVES = sorted(_leaves(RunConfig().to_dict()))
SECTIONS = {k.split(".")[0] for k in LEAVES if "." in k}
PRINTABLE = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp"))
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(PRINTABLE, max_size=12),
                      st.lists(st.floats(0, 1), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
PROPERTY = settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_or_one_line_error(overrides) -> RunConfig | None:
    try:
        return RunConfig().override(overrides)
    except ConfigError as err:
        assert str(err) and "\n" not in str(err)
        return None


@PROPERTY
@given(st.dictionaries(st.sampled_from(LEAVES), ANY_VALUE, max_size=4))
def test_any_values_give_a_config_that_round_trips_or_a_one_line_error(tmp_path_factory, overrides):
    cfg = _valid_or_one_line_error(overrides)
    if cfg is not None:
        assert RunConfig.from_dict(cfg.to_dict()) == cfg
        path = tmp_path_factory.mktemp("cfg") / "c.yaml"
        save_config(cfg, path)
        assert load_config(path) == cfg


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(LEAVES), st.text(max_size=12)), max_size=4))
def test_any_override_text_parses_or_fails_in_one_line(pairs):
    _valid_or_one_line_error([f"{k}={v}" for k, v in pairs])


@PROPERTY
@given(st.text(min_size=1, max_size=20).filter(lambda k: "=" not in k and k.strip() not in LEAVES))
def test_unknown_keys_are_always_named(key):
    with pytest.raises(ConfigError) as info:
        RunConfig().override([f"{key}=1"])
    assert "\n" not in str(info.value)
    if key.strip() not in SECTIONS:
        assert "unknown config key" in str(info.value)


def test_the_few_shot_teacher_is_the_default_where_shots_exist():
    cfg = RunConfig()
    assert cfg.teacher.adapter == "auto" and cfg.adapter == "tip-f"  # K shots, DHO: the paper's DHO-F
    assert cfg.override({"loss.method": "ce"}).adapter == "none"  # learns nothing from the teacher
    assert cfg.override({"data.shots": None, "data.fraction": 0.01}).adapter == "none"  # low-shot: no K shots
    assert cfg.override({"teacher.adapter": "none"}).adapter == "none"  # a choice is kept
    assert cfg.override({"teacher.adapter": "tip"}).adapter == "tip"
    assert cfg.override({"teacher.adapter_file": "t.pt", "data.shots": None, "data.fraction": 0.1}).adapter == "tip-f"
    # the choice is resolved each time, so an override of the data after the fact still counts
    assert RunConfig().override({"data.shots": None, "data.fraction": 0.1}).override({"data.shots": 4}).adapter == "tip-f"


def test_every_paper_preset_names_its_teacher():
    from pathlib import Path

    import yaml

    presets = sorted((Path(__file__).resolve().parents[1] / "configs" / "paper").glob("*.yaml"))
    assert presets
    for path in presets:
        assert yaml.safe_load(path.read_text())["teacher"].get("adapter") in ("none", "tip", "tip-f"), path.name
