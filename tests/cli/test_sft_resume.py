"""`rsground sft --resume`: a fresh run refuses a used workdir; `--resume` continues from its checkpoint."""

import json

from rsground_jax.cli.main import main


def test_sft_refuses_a_used_workdir_and_resume_continues(tmp_path, capsys):
    workdir = tmp_path / "run"
    args = ["sft", "--config", "configs/base_pretrain.py", f"workdir={workdir}", "output=", "eval_images=0",
            "max_pixels=3136"]
    # one short stage on a handful of generated 56x56 scenes
    stage = ('stages=[{"name": "s", "synth": {"preset": "tiny", "image_size": [56, 56]}, "num_images": 12, '
             '"steps": %d, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "end_lr_fraction": 1.0}]')
    assert main([*args, stage % 2]) == 0
    rows = [json.loads(x) for x in (workdir / "s" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2

    capsys.readouterr()
    assert main([*args, stage % 3]) == 2
    err = capsys.readouterr().err
    assert "holds checkpoints up to step 2" in err and "--resume" in err and "Traceback" not in err

    assert main([*args, stage % 3, "--resume"]) == 0
    rows = [json.loads(x) for x in (workdir / "s" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps[-1] == 3 and steps == sorted(set(steps))  # continued at step 3, no step run twice
    assert "3" in {p.name for p in (workdir / "s" / "checkpoints").iterdir()}
