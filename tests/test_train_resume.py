"""Resuming: 2·K steps in one go equal K steps, a crash, and K more after --resume (CPU)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import unclip.training.loop
from unclip.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
K = 2


def train_args(stage: str, out: Path, *extra: str, config: str | None = None) -> list[str]:
    return ["train", stage, "--config", str(ROOT / f"configs/tiny/{config or stage}.yaml"), "--output", str(out),
            "--no-progress", f"training.steps={2 * K}", f"training.checkpoint_every={K}",
            "training.sample_every=1000", *extra]


def weights(out: Path) -> dict[str, torch.Tensor]:
    folder = out / "checkpoints" / f"step_{2 * K:06d}"
    state = {f"model.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()}
    state |= {f"ema.{k}": v for k, v in load_file(str(folder / "ema.safetensors")).items()}
    return state


@pytest.mark.parametrize(("stage", "config"), [("decoder", None), ("prior", None), ("prior", "prior_ar")])
def test_a_crashed_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch, stage,
                                                                                  config):
    args = functools.partial(train_args, config=config)
    assert cli(args(stage, tmp_path / "straight")) == 0

    real_step = unclip.training.loop.optimisation_step

    def crash_in_step_k_plus_1(*args):
        if args[-1] == K + 1:  # the step number: die after checkpoint K, mid-step
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(unclip.training.loop, "optimisation_step", crash_in_step_k_plus_1)
    assert cli(args(stage, tmp_path / "resumed")) == 130
    assert (tmp_path / "resumed/checkpoints/latest").read_text() == f"step_{K:06d}"
    monkeypatch.setattr(unclip.training.loop, "optimisation_step", real_step)
    assert cli(args(stage, tmp_path / "resumed", "--resume")) == 0

    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    worst = max((straight[k].double() - resumed[k].double()).abs().max().item() for k in straight)
    assert worst <= 1e-6
    # and the run really trained: the weights moved from step K
    at_k = load_file(str(tmp_path / f"resumed/checkpoints/step_{K:06d}/model.safetensors"))
    assert any(not torch.equal(at_k[k], straight[f"model.{k}"]) for k in at_k)


def test_resume_refuses_a_changed_model_config(tmp_path, capsys):
    assert cli(train_args("decoder", tmp_path, f"training.steps={K}")) == 0
    assert cli(train_args("decoder", tmp_path, "--resume", "decoder.layers_per_block=2")) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "decoder.layers_per_block (checkpoint 1, now 2)" in err


def test_resume_may_change_the_sampling_defaults_and_exports_them(tmp_path):
    assert cli(train_args("decoder", tmp_path, f"training.steps={K}")) == 0
    assert cli(train_args("decoder", tmp_path, "--resume", "diffusion.guidance_scale=1.5",
                          "diffusion.sample_steps=9")) == 0
    exported = json.loads((tmp_path / "export/decoder/config.json").read_text())["diffusion"]
    assert exported["guidance_scale"] == 1.5 and exported["sample_steps"] == 9


def test_resume_without_a_checkpoint_starts_fresh_and_more_steps_continue(tmp_path):
    assert cli(train_args("prior", tmp_path, f"training.steps={K}", "--resume")) == 0
    assert cli(train_args("prior", tmp_path, "--resume")) == 0
    assert (tmp_path / "checkpoints/latest").read_text() == f"step_{2 * K:06d}"


def test_a_checkpoint_written_before_a_config_field_existed_resumes_with_its_default(tmp_path):
    assert cli(train_args("prior", tmp_path, f"training.steps={K}")) == 0
    config_file = tmp_path / "checkpoints" / f"step_{K:06d}" / "config.json"
    config = json.loads(config_file.read_text())
    for key in ("kind", "buckets", "pca_variance", "dot_top"):  # added with the autoregressive prior
        del config["prior"][key]
    config_file.write_text(json.dumps(config))
    assert cli(train_args("prior", tmp_path, "--resume")) == 0
    assert (tmp_path / "checkpoints/latest").read_text() == f"step_{2 * K:06d}"
