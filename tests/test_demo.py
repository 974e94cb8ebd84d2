import json

from dho.cli.app import main
from dho.experiments.demo import LABELS, METHODS


def test_synthetic_demo_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--synthetic", "--out", str(out), "--epochs", "3", "--seeds", "0", "1"]) == 0
    printed = capsys.readouterr().out
    assert "DHO (mix)" in printed and "DHO-F (mix)" in printed and "teacher (few-shot)" in printed and "+-" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["accuracy"]) == set(LABELS) == {"teacher", "teacher_f", *METHODS}
    assert {"teacher_f", "ce_kd_logit_f", "dho_f", "dho_f_ce_head", "dho_f_kd_head"} <= set(results["accuracy"])
    assert all(0.0 <= v <= 1.0 for v in results["accuracy"].values())
    assert set(results["per_seed"]) == {"0", "1"}
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = [("zero-shot", m) for m in ("ce", "ce_kd_logit", "dho")] + [("few-shot", m) for m in ("ce_kd_logit", "dho")]
    for seed in (0, 1):
        for teacher, method in runs:
            run = out / teacher / "8shot" / f"seed{seed}" / method
            assert (run / "checkpoint" / "model.safetensors").is_file()
            adapter = json.loads((run / "results.json").read_text())["teacher"]
            assert ("tip-adapter-f" in adapter) == (teacher == "few-shot")
        row = results["per_seed"][str(seed)]
        assert row["dho_f"] == results["runs"][f"few-shot/seed{seed}/dho"]["test"]["mixed"]
    # the few-shot teacher differs from the zero-shot one, and a rerun reuses every finished run
    assert results["per_seed"]["0"]["teacher_f"] != results["per_seed"]["0"]["teacher"]
    assert main(["demo", "--synthetic", "--out", str(out), "--epochs", "3", "--seeds", "0", "1"]) == 0
    assert json.loads((out / "results.json").read_text())["accuracy"] == results["accuracy"]


def test_a_demo_rerun_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--synthetic", "--out", str(out), "--epochs", "2"]) == 0
    assert main(["demo", "--synthetic", "--out", str(out), "--epochs", "3"]) == 2
    assert "finished with other settings (optim.epochs: 2 -> 3)" in capsys.readouterr().err
