"""`rsground plan` through the installed command: the per-device parameter bytes equal an independent count,
the memory adds up, and bad requests are refused in one line."""

import json

from tests.reliability.conftest import assert_refused, rsground


def test_plan_of_the_tiny_model(tmp_path):
    out = rsground("plan", "--model", "tiny", "--mesh", "data=2,fsdp=2,tensor=2", "--seq", "128", "--image-side", "112",
                   "--device", "h100", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    p = json.loads(out.stdout)
    m = p["per_device_gib"]
    assert p["batch"] == 4  # one sequence per data x fsdp shard
    assert abs(m["parameters"] - m["parameters_independent"]) <= 1e-12, m  # every dimension divides here
    whole = p["parameters"] * 4 / 2**30  # float32
    assert m["parameters"] < 0.6 * whole, (m, whole)  # fsdp x tensor split the weights
    assert "kv_heads" not in " ".join(p["kept_whole"])  # 2 kv heads split over tensor = 2
    assert abs(m["optimizer_state"] - 2 * m["parameters"]) <= 0.01 * m["parameters"] + 1e-6  # Adam's two moments
    assert m["arguments"] >= m["parameters"] + m["optimizer_state"]
    assert p["fits"] and m["total"] > 0 and p["step_seconds"] > 0 and p["flops_per_step"] > 0


def test_plan_refusals(tmp_path):
    assert_refused(rsground("plan", "--model", "tiny", "--mesh", "data=2,pipe=2", cwd=tmp_path), "--mesh", "data=2,pipe=2")
    assert_refused(rsground("plan", "--model", "tiny", "--mesh", "data=4", "--batch", "6", cwd=tmp_path),
                   "--batch 6", "data x fsdp = 4")
    assert_refused(rsground("plan", "--model", "tiny", "--mesh", "data=2", "--stage", "grpo", cwd=tmp_path),
                   "--stage grpo")
