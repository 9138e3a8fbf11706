"""The bnlab command end to end (quick mode), its help, and its errors."""

import json
import subprocess
import sys

import pytest

from bnlab.cli import build_parser, main

SUBCOMMANDS = ["reproduce", "train", "inspect", "data", "study", "report", "demo"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(c in out for c in SUBCOMMANDS)


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage: bnlab " + cmd in out and len(out) > 200


@pytest.mark.parametrize("argv,needle", [
    (["train", "--out", "x", "--epochs", "zero"], "'zero': must be an integer in [1, "),
    (["train", "--out", "x", "--lr", "-1"], "'-1': must be a finite number > 0"),
    (["train", "--out", "x", "--norm", "fancy"], "invalid value 'fancy': must be one of "),
    (["train", "--out", "x", "--momentum", "1.5"], "'1.5': must be a finite number in [0, 1)"),
    (["reproduce", "--epochs", "-3"], "argument --epochs: invalid value '-3'"),
    (["data", "explode"], "invalid choice: 'explode'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["train", "--out", "x", "--batch-size", "0"], "argument --batch-size: invalid value '0'"),
    (["train", "--out", "x", "--threads", "-2"], "must be an integer in [1, 1024]"),
    (["train", "--out", "x", "--limit-train", "many"], "--limit-train: invalid value 'many'"),
    (["train", "--out", "x", "--lr", "nan"], "argument --lr: invalid value 'nan'"),
    (["train", "--out", "x", "--dataset", "cifar100"], "invalid value 'cifar100': choose one of "),
    (["train", "--out", "x", "--dataset", "cifar10"], "model reads 1x28x28 images"),
    (["train", "--out", "x", "--model", "resnet50"], "invalid value 'resnet50': choose one of "),
    (["train", "--out", "x", "--optimizer", "lbfgs"], "must be one of sgd, nesterov, adamw"),
    (["train", "--out", "x", "--device", "tpu"], "'tpu': choose auto, cpu, cuda, cuda:N or mps"),
    (["train", "--out", "x", "--dist-timeout", "0"], "argument --dist-timeout: invalid value '0'"),
    (["train", "--out", "x", "--weight-decay", "-1"], "'-1': must be a finite number >= 0"),
    (["train"], "the following arguments are required: --out"),
    (["inspect", "x", "--show", "0"], "expected a positive integer"),
    (["inspect"], "the following arguments are required: checkpoint"),
    (["reproduce", "--threads", "two"], "argument --threads: invalid value 'two'"),
    (["reproduce", "--device", "gpu"], "argument --device: invalid value 'gpu'"),
    (["data", "info", "--dataset", "cifar"], "invalid choice: 'cifar'"),
    (["study", "everything"], "invalid choice: 'everything'"),
    (["study", "lr", "--seeds", "0"], "argument --seeds: invalid value '0'"),
    (["report"], "the following arguments are required: directories"),
])
def test_bad_flags_exit_2_with_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert needle in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("bnlab")]) == 1


def test_reproduce_quick_train_inspect_end_to_end(tmp_path, capsys):
    out = tmp_path / "repro"
    assert main(["reproduce", "--quick", "--out", str(out), "--threads", "2"]) == 0
    text = capsys.readouterr().out
    assert "| no-bn |" in text and "| bnlab-bn |" in text and "| torch-bn |" in text
    assert "examples/sec on cpu" in text and f"report: {out / 'REPORT.md'}" in text
    report = (out / "REPORT.md").read_text()
    assert "![learning curves](curves.png)" in report and "gamma" in report
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for arm in ("no-bn", "bnlab-bn", "torch-bn"):
        assert (out / arm / "DONE").exists()
    # ... and a study directory like any other (`bnlab report` reads it as one)
    meta = json.loads((out / "study.json").read_text())
    assert meta["name"] == "reproduce" and meta["seeds"] == 1
    assert [a["runs"] for a in meta["arms"]] == [["no-bn"], ["bnlab-bn"], ["torch-bn"]]
    assert "not testable" in (out / "verdict").read_text()
    assert (out / "figure.png").exists() and "| comparison |" in (out / "table.md").read_text()
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert "id='reproduce'" in (tmp_path / "rep" / "report.html").read_text()

    # Re-running reuses the finished runs (no retraining): same numbers, same report.
    before = (out / "bnlab-bn" / "metrics.jsonl").read_text()
    assert main(["reproduce", "--quick", "--out", str(out)]) == 0
    assert (out / "bnlab-bn" / "metrics.jsonl").read_text() == before

    assert main(["inspect", str(out / "bnlab-bn")]) == 0
    text = capsys.readouterr().out
    assert "layer 1 (6 channels" in text and "gamma" in text and "running_var" in text

    run = tmp_path / "one"
    assert main(["train", "--out", str(run), "--model", "mlp", "--epochs", "1",
                 "--limit-train", "512", "--limit-test", "200", "--no-progress"]) == 0
    assert (run / "DONE").exists()
    assert main(["train", "--out", str(run), "--model", "mlp", "--epochs", "1"]) == 1
    assert "already holds a run" in capsys.readouterr().err


def test_study_and_report_end_to_end(tmp_path, capsys):
    out = tmp_path / "axes"
    assert main(["study", "axes", "--quick", "--out", str(out), "--threads", "2"]) == 0
    assert "verdict" in capsys.readouterr().out
    verdict = (out / "verdict").read_text()
    assert main(["study", "axes", "--quick", "--out", str(out), "--analyze-only"]) == 0
    assert (out / "verdict").read_text() == verdict
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert "report: " in capsys.readouterr().out
    assert (tmp_path / "rep" / "report.html").exists()
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")]) == 1
    assert "not a study directory" in capsys.readouterr().err


def test_data_info_check_fetch(capsys):
    assert main(["data", "info"]) == 0
    assert "looked in, in order:" in capsys.readouterr().out
    assert main(["data", "check"]) == 0
    out = capsys.readouterr().out
    assert "train: 60000 examples" in out and "checksum ok" in out
    assert main(["data", "fetch"]) == 0
    assert "already available" in capsys.readouterr().out


def test_inspect_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("bnlab: error:")


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "bnlab", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "reproduce" in r.stdout


def test_every_command_and_flag_has_help_text():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.description, name
        for action in p._actions:
            assert action.help, (name, action.dest)
