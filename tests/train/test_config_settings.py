"""One source of truth: TrainConfig's and StudyOptions' declarations generate the flags, their
defaults, the config-file schema and the validation, and agree everywhere.

The bad values come from the declarations themselves (``bnlab.settings.bad_values``: out of
each range, not of the type, not among the choices, plus the field's own examples), so a new
field is covered the day it is declared; each is refused by the flag (exit 2, one line) and by
a config file (exit 1, one line, nothing written).
"""

import argparse
import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from bnlab.cli import build_parser, main
from bnlab.settings import FlagType, bad_values, file_keys, flag_of, settings
from bnlab.studies.options import STUDY_SEEDS, StudyOptions
from bnlab.train import TrainConfig
from bnlab.train.config import BN_CUMULATIVE, RECORDS, layer_momentum

INTERNAL = {"model_info", "data_info"}  # set by the trainer: no flag, never from a file


def _sub(name: str) -> argparse.ArgumentParser:
    action = next(a for a in build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings or a.dest == "name"}


def test_every_field_has_a_flag_or_is_internal():
    train = _flags(_sub("train"))
    for name, (spec, _, _) in settings(TrainConfig).items():
        if name in INTERNAL:
            assert spec.internal and name not in train and name not in file_keys(TrainConfig)
            continue
        assert name in train, f"TrainConfig.{name} has no flag"
        assert train[name].option_strings == [flag_of(TrainConfig, name)]
    # ... and every flag of `train` is a field, but for the command's own
    assert set(train) - {f.name for f in fields(TrainConfig)} == {
        "help", "config_file", "out", "resume", "debug"}
    assert {f.name for f in fields(StudyOptions)} <= set(_flags(_sub("study")))


@pytest.mark.parametrize("command,cls,argv", [
    ("train", TrainConfig, ["train", "--out", "x"]),
    ("study", StudyOptions, ["study", "lr"]),
])
def test_every_flag_default_is_the_field_default(command, cls, argv):
    args = build_parser().parse_args(argv)
    for f in fields(cls):
        if f.name not in INTERNAL and f.name != "name":
            assert getattr(args, f.name) == f.default, f.name
    help_text = "".join(_sub(command).format_help().split())  # (argparse wraps at "-" too)
    for name, (spec, kinds, default) in settings(cls).items():
        if spec.internal or spec.positional:
            continue
        shown = ("on" if default else "off") if kinds == (bool,) else \
            spec.unset if default is None else str(default)
        assert "".join(f"{spec.text()} (default: {shown})".split()) in help_text, name


def test_reproduce_flags_are_train_fields_with_their_defaults():
    args = build_parser().parse_args(["reproduce"])
    for name in ("epochs", "seed", "device", "threads", "data_dir"):
        assert getattr(args, name) == getattr(TrainConfig(), name)


def test_study_seeds_help_says_the_truth(capsys):
    from bnlab.studies.registry import STUDIES

    with pytest.raises(SystemExit):
        main(["study", "--help"])
    out = "".join(capsys.readouterr().out.split())  # (argparse wraps at "-" too)
    assert f"(default:thestudy'sown,{STUDY_SEEDS}unless" in out and "1with--quick" in out
    for name, study in STUDIES.items():  # the list names each study's own number
        assert f"{name}({study.seeds}):" in out
    assert StudyOptions(quick=True).seeds_for(STUDIES["lr"].seeds) == 1
    assert StudyOptions().seeds_for(STUDIES["lr"].seeds) == STUDY_SEEDS
    assert StudyOptions(seeds=3, quick=True).seeds_for(STUDY_SEEDS) == 3


CASES = [(name, value) for name, (spec, _, _) in settings(TrainConfig).items()
         if not spec.internal for value in bad_values(TrainConfig, name)]


def test_every_checked_field_has_bad_values():
    """Only switches (and free names checked elsewhere) have nothing a flag could refuse."""
    covered = {name for name, _ in CASES}
    for name, (spec, kinds, _) in settings(TrainConfig).items():
        if not spec.internal and kinds != (bool,):
            assert name in covered, name


@pytest.mark.parametrize("name,value", CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_bad_value_from_the_command_line_is_exit_2_one_line(capsys, tmp_path, name, value):
    flag = flag_of(TrainConfig, name)
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path / "run"), f"{flag}={value}"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("bnlab")]
    assert len(lines) == 1 and lines[0].startswith(f"bnlab train: error: argument {flag}: ")
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def _file_value(name: str, text: str):
    """The value a config file would hold for the command-line text (the parsed number where
    the text is one, else the text itself)."""
    try:
        return FlagType(TrainConfig, name).parse(text)
    except ValueError:
        return text


@pytest.mark.parametrize("name,value", CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_bad_value_from_a_config_file_is_exit_1_one_line(capsys, tmp_path, name, value):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({name: _file_value(name, value)}))
    assert main(["train", "--out", str(tmp_path / "run"), "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"bnlab: error: {path}: ") and err.count("\n") == 1, err
    assert name in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", [n for n, (_, kinds, _) in settings(TrainConfig).items()
                                  if kinds == (bool,)])
def test_switches_in_a_config_file_are_true_or_false(capsys, tmp_path, name):
    for value in ("yes", 1, None):
        path = tmp_path / "c.json"
        path.write_text(json.dumps({name: value}))
        assert main(["train", "--out", str(tmp_path / "run"), "--config", str(path)]) == 1
        err = capsys.readouterr().err
        assert f"invalid {name}=" in err and "must be true or false" in err


@pytest.mark.parametrize("argv,needle", [
    (["--optimizer", "nesterov"], "Nesterov's method needs a momentum"),
    (["--optimizer", "adamw", "--momentum", "0.9"], "momentum is SGD's"),
    (["--no-decay-on-norm"], "there is no decay to leave out"),
    (["--epochs", "3", "--warmup-epochs", "3"], "must be fewer than epochs=3"),
    (["--norm", "own"], "only a network of your own keeps its own layers"),
])
def test_combinations_are_usage_errors(capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", "x", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err
    assert len([ln for ln in err.splitlines() if ln.startswith("bnlab")]) == 1


def _config(argv: list[str]) -> TrainConfig:
    from bnlab.cli import _check_combinations

    args = build_parser().parse_args(["train", "--out", "x", *argv])
    _check_combinations(args)
    return args.config


def test_new_flags_reach_the_config():
    got = _config(["--optimizer", "nesterov", "--momentum", "0.9", "--weight-decay", "5e-4",
                   "--no-decay-on-norm", "--schedule", "cosine", "--warmup-epochs", "2",
                   "--amp", "bf16", "--device", "cuda:1", "--bn-momentum", "0.05",
                   "--bn-eps", "1e-3", "--precise-bn", "512", "--init", "gaussian-0.01"])
    assert (got.optimizer, got.momentum, got.weight_decay, got.no_decay_on_norm) == (
        "nesterov", 0.9, 5e-4, True)
    assert (got.schedule, got.warmup_epochs, got.amp, got.device) == ("cosine", 2, "bf16",
                                                                       "cuda:1")
    assert (got.bn_momentum, got.bn_eps, got.precise_bn, got.init) == (0.05, 1e-3, 512,
                                                                       "gaussian-0.01")
    assert _config(["--bn-momentum", "none"]).bn_momentum == BN_CUMULATIVE
    assert _config([]).init is None and _config([]).bn_momentum is None


def test_cumulative_bn_momentum_is_torchs_momentum_none():
    """"cumulative" sets a layer's momentum to None: torch's cumulative average, checked
    against the plain mean of the batch variances (the oracle)."""
    bn = torch.nn.BatchNorm1d(3, momentum=layer_momentum(BN_CUMULATIVE))
    batches = [torch.randn(8, 3, dtype=torch.float64) * (i + 1) for i in range(4)]
    bn.double()
    for x in batches:
        bn(x)
    mean_var = torch.stack([x.var(0, unbiased=True) for x in batches]).mean(0)
    torch.testing.assert_close(bn.running_var, mean_var, rtol=1e-12, atol=1e-12)
    assert layer_momentum(0.05) == 0.05


def test_old_config_files_keep_working(tmp_path):
    """optimizer "adam" (before adamw) is read from a file, though no longer offered."""
    from bnlab.train import load_config

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"optimizer": "adam", "init": "xavier"}))
    assert load_config(path).optimizer == "adam"
    assert "adam" not in _flags(_sub("train"))["optimizer"].metavar.strip("{}").split(",")


def test_run_records_are_skipped_never_taken(tmp_path):
    """provenance, model_info and data_info in a config file: skipped, not settings."""
    from bnlab.train import load_config

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lr": 0.5, "provenance": {"code": "x"},
                                "model_info": {"repr": "Evil()"}, "data_info": {"n": 1}}))
    config = load_config(path)
    assert config.lr == 0.5 and config.model_info is None and config.data_info is None
    assert {"provenance", "model_info", "data_info"} == RECORDS


def test_error_lines_stay_short(tmp_path, capsys):
    """A hostile value megabytes long is named, not printed whole."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "m" * 1_000_000}))
    assert main(["train", "--out", str(tmp_path / "r"), "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert len(err) < 2000 and "invalid model=" in err


ROOT = Path(__file__).resolve().parents[2]


def test_readme_flag_table_is_generated_and_fresh():
    """README.md's table is flag_table(TrainConfig) itself: regenerate it when a setting
    changes (python -c "from bnlab.settings import flag_table; ...")."""
    from bnlab.settings import flag_table

    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- flag table: generated by bnlab.settings.flag_table(TrainConfig)")
    end = text.index("<!-- end of flag table -->")
    assert text[start:end].split("\n", 1)[1] == flag_table(TrainConfig)


@pytest.mark.parametrize("readme", ["README.md", "README.zh-CN.md"])
def test_readme_lists_every_flag(readme):
    text = (ROOT / readme).read_text()
    for name in settings(TrainConfig):
        flag = flag_of(TrainConfig, name)
        if flag is not None:
            assert f"| `{flag}" in text and f"`{name}`" in text, (readme, flag)
