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

    code, out, _ = _run(capsys, "predict", str(run), str(synth_root / "test" / "*" / "000[01].png"), "--format", "csv")
    table = list(csv.reader(io.StringIO(out)))
    assert code == 0 and table[0] == ["path", "label1", "score1"] and len(table) == 1 + 8

    code, out, _ = _run(capsys, "eval", str(run), "--teacher", "--out", str(tmp_path / "ev"))  # the run stands for its checkpoint
    scores = json.loads((tmp_path / "ev" / "eval.json").read_text())
    results = json.loads((run / "results.json").read_text())
    assert code == 0 and scores["n"] == 32  # the scores training reported, each model at its own input size
    assert {k: scores[k] for k in ("ce_head", "kd_head", "mixed", "teacher")} == \
        {k: results["test"][k] for k in ("ce_head", "kd_head", "mixed", "teacher")}


def test_zeroshot_and_errors(synth_root, tmp_path, capsys):
    code, out, _ = _run(capsys, "zeroshot", f"data.root={synth_root}", "data.shots=1", "--out", str(tmp_path))
    assert code == 0 and "zero-shot" in out
    assert 0 <= json.loads((tmp_path / "zeroshot.json").read_text())["teacher"] <= 1

    code, out, _ = _run(capsys, "zeroshot", f"data.root={synth_root}", "data.shots=100")  # no labels used: no shots check
    assert code == 0 and "zero-shot" in out and "few-shot" not in out
    code, out, _ = _run(capsys, "zeroshot", f"data.root={synth_root}", "data.shots=2", "teacher.adapter=tip",
                        "teacher.image_size=32", "--out", str(tmp_path / "tip"))
    scores = json.loads((tmp_path / "tip" / "zeroshot.json").read_text())
    assert code == 0 and "few-shot (8 labeled images)" in out and 0 <= scores["teacher_f"] <= 1
    assert scores["teacher_f_id"].endswith("+tip-adapter")

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
        (__import__("safetensors").SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                                   'message: "No space left on device" })'),
         "dho: error: no space left on the device; free some space"),  # safetensors' own error type
    ]:
        def fail(args, err=err):
            raise err

        monkeypatch.setattr(dho.cli.app, "cmd_synth", fail)
        assert main(["synth", "--out", "x"]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_one_line_errors_name_what_to_do(tmp_path, capsys, monkeypatch):
    import dho.cli.app

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")
    code, _, err = _run(capsys, "report", str(tmp_path / "run"))
    assert code == 1 and err.startswith(f"dho: error: '{tmp_path / 'run'}' is a training run (no results.csv)")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1e-3\n  epochs: 2\n")
    for command in ("train", "sweep"):
        code, _, err = _run(capsys, command, *(["--config", str(bad)] if command == "train" else [str(bad)]))
        assert code == 2 and err.startswith(f"dho: error: {bad}:3:") and "not valid YAML" in err, err
        assert len(err.strip().splitlines()) == 1

    def missing(args):
        (tmp_path / "nothing.txt").read_text()

    monkeypatch.setattr(dho.cli.app, "cmd_synth", missing)
    code, _, err = _run(capsys, "synth", "--out", "x")
    assert err.strip() == f"dho: error: no such file or directory: {tmp_path / 'nothing.txt'}"
    with pytest.raises(FileNotFoundError):  # --traceback: the error itself, for a bug report
        main(["--traceback", "synth", "--out", "x"])


def test_a_closed_pipe_ends_quietly(capsys, monkeypatch):
    """`dho config | head -1`: the reader leaves; no "Broken pipe" traceback or message."""
    import signal

    import dho.cli.app

    def write_to_closed_pipe(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(dho.cli.app, "cmd_config", write_to_closed_pipe)
    assert main(["config"]) == 128 + signal.SIGPIPE
    assert capsys.readouterr().err == ""
