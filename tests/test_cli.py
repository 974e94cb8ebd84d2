import csv
import io
import json

import pytest

from dho.cli.app import main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_tune_predict_eval_end_to_end(synth_root, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, _ = _run(capsys, "train", "--out", str(run), f"data.root={synth_root}", "data.shots=2",
                        "student.image_size=32", "teacher.image_size=48", "optim.epochs=4", "optim.batch_size=8", "threads=2")
    assert code == 0 and "test accuracy" in out and (run / "checkpoint" / "model.json").is_file()

    code, out, _ = _run(capsys, "tune", str(run / "checkpoint"), "--out", str(tmp_path / "tune"), "--write")
    assert code == 0 and "best on val" in out
    rows = list(csv.DictReader((tmp_path / "tune" / "grid.csv").open()))
    assert len(rows) == 21 * 7 and {"alpha", "beta", "accuracy"} == set(rows[0])
    tuned = json.loads((tmp_path / "tune" / "tune.json").read_text())
    meta = json.loads((run / "checkpoint" / "model.json").read_text())
    assert (meta["alpha"], meta["beta"]) == (tuned["alpha"], tuned["beta"])

    code, out, _ = _run(capsys, "predict", str(run / "checkpoint"), str(synth_root / "test" / "star"), "--topk", "2")
    records = json.loads(out)
    assert code == 0 and len(records) == 8 and len(records[0]["labels"]) == 2
    assert records[0]["scores"][0] >= records[0]["scores"][1]

    code, out, _ = _run(capsys, "predict", str(run / "checkpoint"), str(synth_root / "test" / "*" / "000[01].png"), "--format", "csv")
    table = list(csv.reader(io.StringIO(out)))
    assert code == 0 and table[0] == ["path", "label1", "score1"] and len(table) == 1 + 8

    code, out, _ = _run(capsys, "eval", str(run / "checkpoint"), "--teacher", "--out", str(tmp_path / "ev"))
    scores = json.loads((tmp_path / "ev" / "eval.json").read_text())
    results = json.loads((run / "results.json").read_text())
    assert code == 0 and scores["n"] == 32  # the scores training reported, each model at its own input size
    assert {k: scores[k] for k in ("ce_head", "kd_head", "mixed", "teacher")} == \
        {k: results["test"][k] for k in ("ce_head", "kd_head", "mixed", "teacher")}


def test_zeroshot_and_errors(synth_root, tmp_path, capsys):
    code, out, _ = _run(capsys, "zeroshot", f"data.root={synth_root}", "data.shots=1", "--out", str(tmp_path))
    assert code == 0 and "zero-shot" in out
    assert 0 <= json.loads((tmp_path / "zeroshot.json").read_text())["teacher"] <= 1

    code, _, err = _run(capsys, "train", "optim.lrr=1")
    assert code == 2 and err.strip() == "dho: error: unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"
    code, _, err = _run(capsys, "train", f"data.root={tmp_path / 'missing'}")
    assert code == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "predict", str(tmp_path / "nockpt"), "x.png")
    assert code == 1 and "no checkpoint metadata" in err


def test_tune_refuses_the_test_split(tmp_path, capsys):
    code, _, err = _run(capsys, "tune", str(tmp_path), "--split", "test")
    assert code == 1 and "refusing to tune" in err


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", "ckpt", "a.png", "--topk", "0"])
    assert info.value.code == 2


def test_disk_full_and_out_of_memory_are_one_line(capsys, monkeypatch):
    import errno

    import dho.cli.app

    for err, expected in [
        (OSError(errno.ENOSPC, "No space left on device", "runs/x/state/last/tensors.safetensors"),
         "dho: error: no space left on the device writing runs/x/state/last/tensors.safetensors; free some space"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details"), "dho: error: out of memory (CUDA out of memory."),
        (MemoryError(), "dho: error: out of memory (MemoryError); lower optim.batch_size"),
    ]:
        def fail(args, err=err):
            raise err

        monkeypatch.setattr(dho.cli.app, "cmd_synth", fail)
        assert main(["synth", "--out", "x"]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), lines
