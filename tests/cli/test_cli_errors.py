"""Bad input on the command line: one clear line on stderr, exit status 2, no traceback."""

import pytest

from rsground_jax.cli.main import main


@pytest.mark.parametrize("argv, message", [
    (["sft", "--config", "no/such/config.py"], "no such config file"),
    (["sft", "--config", "configs/base_pretrain.py", "optim.lr=3"], "unknown config key 'optim'"),
    (["sft", "--config", "configs/base_pretrain.py", "--config.seed=abc"], "seed is a int, got str"),
    (["eval", "--data", "no/such/dataset", "--model", "base"], "dataset folder does not exist"),
    (["eval", "--data", "configs", "--model", "no/such/model"], "no such model directory"),
    (["predict", "--image", "no/such.jpg", "--query", "the ship"], "no such image file"),
    (["eval", "--data", "configs", "--model", "base", "--out", "README.md/out"], "cannot create the folder"),
    (["eval", "--data", "configs", "--model", "base", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["eval", "--data", "configs", "--model", "base", "--devices", "999"], "--devices 999: this host has"),
    (["eval", "--data", "configs", "--model", "base", "--limit", "0"], "--limit must be at least 1"),
])
def test_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_malformed_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    assert main(["sft", "--config", str(bad)]) == 2
    assert "failed to load (SyntaxError" in capsys.readouterr().err
    none = tmp_path / "none.py"
    none.write_text("x = 1\n")
    assert main(["sft", "--config", str(none)]) == 2
    assert "must define get_config()" in capsys.readouterr().err
