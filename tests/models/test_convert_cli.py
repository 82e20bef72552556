"""`rsground convert`: HF -> Orbax -> HF keeps every tensor bit-identical; bad paths give one clear line."""

import numpy as np

from rsground_jax.cli.main import main

from .hf_reference import make_hf_model
from .test_checkpoint import _tensors


def test_hf_orbax_hf_round_trip(tmp_path, rng, capsys):
    src = tmp_path / "hf"
    make_hf_model(src, tied=bool(rng.integers(2)), seed=int(rng.integers(2**31)))
    assert main(["convert", str(src), str(tmp_path / "orbax"), "--to", "orbax"]) == 0
    assert (tmp_path / "orbax" / "params").is_dir()
    assert main(["convert", str(tmp_path / "orbax"), str(tmp_path / "back"), "--to", "hf"]) == 0
    a, b = _tensors(src), _tensors(tmp_path / "back")
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    assert "converted orbax" in capsys.readouterr().out


def test_bfloat16_conversion(tmp_path, rng):
    src = tmp_path / "hf"
    make_hf_model(src, tied=False, seed=int(rng.integers(2**31)))
    assert main(["convert", str(src), str(tmp_path / "bf16"), "--to", "hf", "--dtype", "bfloat16"]) == 0
    b = _tensors(tmp_path / "bf16")
    assert all(str(v.dtype) == "bfloat16" for v in b.values())


def test_bad_source_is_one_line(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert "missing: no such directory" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), str(tmp_path / "out"), "--to", "orbax"]) == 2
    assert "no model.safetensors" in capsys.readouterr().err
