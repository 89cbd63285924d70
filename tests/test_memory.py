"""The memory planner (``unclip params --memory``): estimates on the meta device against the real
peak of one optimisation step on the CPU, and the sharding arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from unclip.cli import main
from unclip.config import load_stage_config
from unclip.training.memory import STRATEGIES, measure_peak, plan_memory

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize(("config", "batch"), [
    ("tiny/decoder", 16), ("tiny/clip", 64), ("shapes/decoder", 16), ("shapes/prior", 32),
    ("shapes/prior_ar", 32), ("shapes/upsampler_256", 4), ("shapes/clip", 64),
])
def test_the_estimate_is_within_20_percent_of_the_real_peak_on_the_cpu(config, batch):
    cfg = load_stage_config(CONFIGS / f"{config}.yaml")
    estimate, real = plan_memory(cfg, batch=batch).total, measure_peak(cfg, batch)
    assert 0.8 < estimate / real < 1.2, (estimate / 2**20, real / 2**20)


def test_sharding_divides_what_it_shards():
    cfg = load_stage_config(CONFIGS / "shapes" / "decoder.yaml")
    one = plan_memory(cfg, batch=2)
    assert one.gradients == one.weights and one.optimizer == 2 * one.weights == 2 * one.ema
    ddp = plan_memory(cfg, batch=2, gpus=8, strategy="ddp")
    assert ddp.gradients == 2 * one.gradients  # DDP's gradient buckets
    zero2 = plan_memory(cfg, batch=2, gpus=8, strategy="zero2")
    assert zero2.weights == one.weights
    assert (zero2.optimizer, zero2.gradients) == (one.optimizer / 8, one.gradients / 8)
    for strategy in ("zero3", "fsdp"):
        full = plan_memory(cfg, batch=2, gpus=8, strategy=strategy)
        assert (full.weights, full.ema, full.optimizer) == (one.weights / 8, one.ema / 8, one.optimizer / 8)
        assert full.activations == one.activations and full.frozen == one.frozen > 0  # not sharded
    assert plan_memory(cfg, batch=4).activations == pytest.approx(2 * one.activations, rel=0.05)
    assert plan_memory(cfg, batch=2, precision="bf16").activations < one.activations


def test_gradient_checkpointing_lowers_the_activations():
    plain = load_stage_config(CONFIGS / "paper" / "decoder.yaml")
    checkpointed = load_stage_config(CONFIGS / "paper" / "decoder.yaml", ["training.gradient_checkpointing=true"])
    a, b = (plan_memory(c, batch=2).activations for c in (plain, checkpointed))
    assert b < 0.7 * a


def test_the_cli_prints_every_strategy_and_what_fits(capsys):
    path = str(CONFIGS / "paper" / "decoder.yaml")
    assert main(["params", path, "--memory", "--batch", "8", "--precision", "bf16", "--gpus", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line.split() for line in lines[2:]]
    assert [r[1] for r in rows] == list(STRATEGIES) and all(r[0] == "decoder" for r in rows)
    totals = {r[1]: float(r[-2]) for r in rows}
    assert totals["ddp"] > totals["zero2"] > totals["zero3"] == totals["fsdp"]
    assert main(["params", path, "--memory", "--batch", "8", "--gpus", "8", "--strategy", "zero3",
                 "--gpu-memory", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("no")
    assert main(["params", path, "--memory", "--gpu-memory", "0"]) == 2
    assert "--gpu-memory" in capsys.readouterr().err
