"""--config FILE (JSON or YAML): round trips, precedence of explicit flags, one-line errors."""

import json

import pytest
import yaml

from bnlab.cli import _with_config_file as with_config_file
from bnlab.cli import build_parser, main
from bnlab.errors import CorruptFileError
from bnlab.train import TrainConfig, load_config


def _parsed(argv):
    """The TrainConfig `bnlab train ARGV` would run (the command's own parsing path)."""
    from bnlab.cli import _check_combinations

    parser = build_parser()
    args = with_config_file(parser, parser.parse_args(argv), argv)
    _check_combinations(args)
    return args.config


def test_a_run_config_json_is_a_valid_config(tmp_path):
    config = TrainConfig(model="mlp", epochs=3, lr=0.3, batch_size=64, momentum=0.9,
                         limit_train=500, fuse=False, progress=False, tensorboard=True)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict(), indent=2))  # what a run directory holds
    assert load_config(path) == config
    assert _parsed(["train", "--out", "x", "--config", str(path)]) == config


def test_yaml_round_trip_and_yaml_numbers(tmp_path):
    config = TrainConfig(norm="torch", epochs=2, lr=0.05, normalize=True, seed=7)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert load_config(path) == config
    path.write_text("lr: 1e-3\nweight_decay: 5e-4\n")  # strings to YAML 1.1: numbers here
    assert (load_config(path).lr, load_config(path).weight_decay) == (1e-3, 5e-4)


def test_explicit_flags_win_over_the_file_and_the_file_over_defaults(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("epochs: 4\nlr: 0.2\nprogress: false\nfuse: false\noptimizer: adam\n")
    got = _parsed(["train", "--out", "x", "--config", str(path), "--lr", "0.7",
                   "--optimizer", "sgd"])
    assert (got.lr, got.optimizer) == (0.7, "sgd")  # flags
    assert (got.epochs, got.progress, got.fuse) == (4, False, False)  # file
    assert got.batch_size == TrainConfig().batch_size  # default
    # explicit flags win even where they equal the default the file overrides
    got = _parsed(["train", "--out", "x", "--config", str(path), "--epochs", "10"])
    assert got.epochs == 10
    assert load_config(path, lr=0.9, epochs=1).lr == 0.9


@pytest.mark.parametrize("name,text,needle", [
    ("c.json", '{"epochs": 2, "batchsize": 3}', "unknown key 'batchsize'; did you mean "
                                                 "'batch_size'?"),
    ("c.yaml", "lr: -1\n", "invalid lr=-1: must be a finite number > 0"),
    ("c.yaml", "epochs: three\n", "invalid epochs='three': must be an integer in [1, "),
    ("c.yaml", "norm: fancy\n", "invalid norm='fancy': must be one of"),
    ("c.yaml", "- 1\n- 2\n", "holds a list, not a mapping"),
    ("c.yaml", "lr: [1\n", "not valid YAML"),
    ("c.json", "{", "not valid JSON"),
    ("c.json", '{"data_dir": "/no/such/dir"}', "data_dir '/no/such/dir' is not a directory"),
])
def test_bad_files_are_one_line_and_exit_1(tmp_path, capsys, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    assert main(["train", "--out", str(tmp_path / "run"), "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"bnlab: error: {path}: ") and err.count("\n") == 1, err
    assert needle in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(CorruptFileError):
        load_config(path)


def test_missing_config_file_exit_1(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "no.json")]
                ) == 1
    assert "no.json: missing" in capsys.readouterr().err


def test_tensorboard_flag_and_key(tmp_path):
    assert _parsed(["train", "--out", "x", "--tensorboard"]).tensorboard is True
    assert _parsed(["train", "--out", "x"]).tensorboard is False
    path = tmp_path / "c.json"
    path.write_text('{"tensorboard": true}')
    assert _parsed(["train", "--out", "x", "--config", str(path)]).tensorboard is True
