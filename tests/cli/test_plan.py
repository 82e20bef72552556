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
    assert_refused(rsground("plan", "--model", "tiny", "--mesh", "data=2", "--stage", "grpo", "--batch", "3",
                            cwd=tmp_path), "--batch 3", "data x fsdp = 2")


def test_plan_of_the_tiny_grpo_step(tmp_path):
    out = rsground("plan", "--model", "tiny", "--mesh", "data=2,fsdp=2,tensor=2", "--stage", "grpo", "--seq", "128",
                   "--image-side", "112", "--generations", "4", "--new-tokens", "32", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    p = json.loads(out.stdout)
    m = p["per_device_gib"]
    assert (p["batch"], p["generations"], p["new_tokens"]) == (4, 4, 32)  # prompts: one per data x fsdp shard
    assert abs(m["parameters"] - m["parameters_independent"]) <= 1e-12, m
    # the program takes the policy, Adam's moments and the reference policy, each split alike
    assert m["arguments"] >= 2 * m["parameters"] + m["optimizer_state"]
    # KV cache: 2 (k, v) x layers x 4 rows a device (16 completions over 4 shards) x 160 positions x
    # 2 kv heads / tensor 2 x head dim x 2 bytes (bfloat16)
    from rsground_jax.models.qwen2_5_vl.config import preset

    t = preset("tiny").text
    want = 2 * t.num_hidden_layers * 4 * 160 * (t.num_key_value_heads // 2) * t.head_dim * 2
    assert abs(m["kv_cache"] * 2**30 - want) < 1, (m["kv_cache"] * 2**30, want)
    assert m["temporaries"] * 2**30 >= want  # the cache lives in the program's temporaries
    f = p["flops_by_phase"]
    assert all(f[k] > 0 for k in ("prefill", "decode", "reference", "update"))
    assert abs(p["flops_per_step"] - sum(f.values())) <= 1e-6 * p["flops_per_step"]
    assert abs(p["step_seconds"] - p["compute_seconds"] - p["decode_seconds"]) < 1e-12 and p["decode_seconds"] > 0
