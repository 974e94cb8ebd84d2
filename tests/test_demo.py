import json

from dho.cli.app import main
from dho.experiments.demo import METHODS


def test_synthetic_demo_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--synthetic", "--out", str(out), "--epochs", "3", "--seeds", "0", "1"]) == 0
    printed = capsys.readouterr().out
    assert "DHO (mix)" in printed and "+-" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["accuracy"]) == {"teacher", *METHODS}
    assert all(0.0 <= v <= 1.0 for v in results["accuracy"].values())
    assert set(results["per_seed"]) == {"0", "1"}
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for seed in (0, 1):
        for method in ("ce", "ce_kd_logit", "dho"):
            assert (out / f"seed{seed}" / method / "checkpoint" / "model.safetensors").is_file()
