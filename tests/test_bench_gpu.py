"""bench/gpu.sh, the GPU rows' one command, end to end on the CPU path (tiny sizes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_script_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--device", "cpu", "--setups", "rn50", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert set(row["images_per_s"]) == {"ours, online teacher", "ours, teacher from the store", "bare student step",
                                        "floor: teacher fwd + bare student step", "authors'-style loop"}
    assert all(rate > 0 for rate in row["images_per_s"].values())
    assert len(row["ratios"]) == 5 and all(r > 0 for r in row["ratios"].values())
    # a ResNet-18 training step at 224 px: forward 3.6 GFLOPs per image, backward about twice that
    assert 8 < row["gflops_per_image"]["ours, teacher from the store"] < 14
    assert row["gflops_per_image"]["ours, online teacher"] > row["gflops_per_image"]["ours, teacher from the store"] + 5
    assert row["tflops"]["ours, teacher from the store"] > 0
    assert "fraction_of_bf16_peak" not in row  # no bf16 peak is known for a CPU
    assert "images/s" in proc.stdout and "ratio (1)" in proc.stdout
