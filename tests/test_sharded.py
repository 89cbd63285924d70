"""Sharded training and data at scale on two CPU processes (gloo) through `accelerate launch`:
FSDP (configs/accelerate/fsdp.yaml) trains, checkpoints, resumes and exports; `unclip embed`
splits a webdataset between processes and DataLoader workers."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unclip.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
DECODER = str(ROOT / "configs/tiny/decoder.yaml")
TINY = ROOT / "configs/tiny"


@pytest.mark.parametrize("path", sorted((ROOT / "configs/accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load_and_fsdp_ones_ask_for_fsdp2(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.mixed_precision == "no"  # training.mixed_precision decides
    assert config.num_processes == (1 if config.distributed_type == "NO" else 8 * config.num_machines)
    if config.distributed_type == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2  # the loop refuses FSDP1
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    if config.distributed_type == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])  # zero2.yaml, zero3.yaml


@pytest.mark.parametrize("stage", ["decoder", "upsampler_256", "prior", "prior_ar"])
def test_every_network_names_fsdp_units_it_holds(stage):
    """accelerate's wrapping policy looks each name up and stops a launch when one is missing."""
    from accelerate.utils.dataclasses import get_module_class_from_name

    from unclip.config import load_stage_config
    from unclip.networks.build import build_network, enable_gradient_checkpointing

    network = build_network(load_stage_config(TINY / f"{stage}.yaml"))
    units = network._no_split_modules
    assert units and all(get_module_class_from_name(network, name) is not None for name in units)
    enable_gradient_checkpointing(network)  # the checkpointing subclasses keep their classes' names
    assert all(get_module_class_from_name(network, name) is not None for name in units)


ENGINES = [pytest.param("fsdp", id="fsdp"),
           pytest.param("zero3", id="zero3", marks=pytest.mark.skipif(
               importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed (not a dependency)"))]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_sharded_run_killed_and_resumed_equals_an_uninterrupted_one_and_exports_a_loadable_decoder(
        engine, tmp_path, accelerate_launch, tiny_pipeline_dir):
    def train(out: Path, *extra: str):
        return accelerate_launch("--config_file", str(ROOT / f"configs/accelerate/{engine}.yaml"), "-m", "unclip",
                                 "train", "decoder", "--config", DECODER, "--output", str(out), "--no-progress",
                                 "training.steps=4", "training.checkpoint_every=2", "training.sample_every=1000",
                                 *extra)

    straight = tmp_path / "straight"
    first = train(straight)
    if engine == "fsdp":
        assert "FSDP:" in first.stdout and "this process holds" in first.stdout  # the weights are sharded
    step2 = straight / "checkpoints/step_000002"
    assert json.loads((step2 / "state.json").read_text())["engine"] is True
    assert len(list((step2 / "ema").iterdir())) >= 2  # the EMA's shards, written by both processes

    killed = tmp_path / "killed"  # as if killed after its step-2 checkpoint
    shutil.copytree(straight / "checkpoints", killed / "checkpoints", ignore=shutil.ignore_patterns("step_000004"))
    (killed / "checkpoints/latest").write_text("step_000002")
    train(killed, "--resume")
    resumed = load_file(killed / "export/decoder/model.safetensors")
    reference = load_file(straight / "export/decoder/model.safetensors")
    assert resumed.keys() == reference.keys()
    for key in resumed:  # weights, optimiser moments, EMA and schedule all came back from the shards
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=1e-6, msg=key)

    pipeline = tmp_path / "pipeline"  # the tiny cascade with the sharded run's decoder in its slot
    shutil.copytree(tiny_pipeline_dir, pipeline)
    shutil.rmtree(pipeline / "decoder")
    shutil.copytree(killed / "export/decoder", pipeline / "decoder")
    assert cli(["generate", "a red circle", "--checkpoint", str(pipeline), "--steps", "2", "--seed", "0",
                "--out", str(tmp_path / "images"), "--quiet"]) == 0
    assert list((tmp_path / "images").glob("*.png"))


def test_embed_on_two_processes_with_two_workers_each_reads_every_sample_once(tmp_path, accelerate_launch):
    from unclip.data.embeddings import EmbeddingsDataset
    from unclip.data.webdataset import write_shards

    samples = [{"image": torch.rand(3, 32, 32) * 2 - 1, "caption": f"sample {i}"} for i in range(18)]
    write_shards(samples, tmp_path / "shards", per_shard=6)  # 3 shards < 4 readers: every 4th sample, 5/5/4/4
    out = tmp_path / "emb"
    accelerate_launch("--multi_gpu", "-m", "unclip", "embed", "--config", str(ROOT / "configs/tiny/prior.yaml"),
                      "--output", str(out), "--batch-size", "4", "--num-workers", "2",
                      "--shard-size", "4", "data.kind=webdataset", f"data.path={tmp_path / 'shards'}/*.tar",
                      "data.resolution=32")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["count"] == 18 and {s.split("-")[0] for s in meta["shards"]} == {"p000", "p001"}
    assert not list(out.glob("metadata.part*"))
    captions = sorted(item["caption"] for item in EmbeddingsDataset(out))
    assert captions == sorted(s["caption"] for s in samples)  # each sample exactly once over both processes
