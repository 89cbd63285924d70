"""The shared training loop: its contracts on a toy task, and a short CLI run of every stage."""

from __future__ import annotations

import json
import math
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import IterableDataset

from unclip.config import ClipStageConfig, ConfigError, TrainingConfig
from unclip.training import loop
from unclip.training import resume as train_checkpoint
from unclip.training.batches import batch_stream
from unclip.training.ema import EMA
from unclip.training.loop import TrainingError, train
from unclip.training.stages import StageTask

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------
# a toy task: y = w·x + b, one frozen parameter


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)

    def forward(self, x):
        return self.linear(x)


def toy_data(n: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n, 4, generator=g)
    return [{"x": x, "y": x.sum(0, keepdim=True) + 1, "caption": f"sample {i}"} for i, x in enumerate(xs)]


def toy_config(**training) -> ClipStageConfig:
    base = {"steps": 4, "batch_size": 4, "lr": 0.05, "ema_decay": 0.5, "checkpoint_every": 2, "sample_every": 1000,
            "log_every": 1}
    return ClipStageConfig(training=TrainingConfig(**{**base, **training}))


def toy_build(dataset=None, loss=None, seen: list | None = None):
    def build(cfg, ctx):
        def default_loss(model, batch):
            return {"loss": ((model(batch["x"]) - batch["y"]) ** 2).mean()}

        toy = Toy()
        if seen is not None:  # the network's own dtype in the forward (autocast)
            toy.linear.register_forward_hook(lambda module, args, out: seen.append(out.dtype))

        def export(model, folder: Path):
            folder.mkdir(parents=True, exist_ok=True)
            save_file(model.state_dict(), str(folder / "toy.safetensors"))

        return StageTask("toy", toy, toy_data() if dataset is None else dataset, loss or default_loss, export)

    return build


def run_toy(cfg, out: Path, **kwargs) -> Path:
    return train(cfg, out, progress=False, build=kwargs.pop("build", toy_build()), **kwargs)


def logs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_loop_writes_checkpoints_logs_and_the_ema_export(tmp_path):
    export = run_toy(toy_config(), tmp_path)
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text() == "step_000004"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000002", "step_000004"]
    state = json.loads((root / "step_000004" / "state.json").read_text())
    assert state == {"step": 4, "samples": 16, "ema_updates": 4, "written_by": 0, "engine": False}
    model = load_file(str(root / "step_000004" / "model.safetensors"))
    ema = load_file(str(root / "step_000004" / "ema.safetensors"))
    exported = load_file(str(export / "toy.safetensors"))
    assert not torch.equal(model["linear.weight"], ema["linear.weight"])
    assert torch.equal(exported["linear.weight"], ema["linear.weight"])  # the export ships the EMA
    steps = [r["step"] for r in logs(tmp_path) if "loss" in r]
    assert steps == [1, 2, 3, 4]
    losses = [r["loss"] for r in logs(tmp_path) if "loss" in r]
    assert losses[-1] < losses[0]
    assert (tmp_path / "config.yaml").is_file()


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    run_toy(toy_config(checkpoint_every=1), tmp_path, keep_checkpoints=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000003", "step_000004"]


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    """AdamW's update hardly depends on the gradient's scale, so a large eps makes it: micro-batch
    gradients summed instead of averaged then move the weights by ~3e-2, not ~3e-8 (checked)."""
    run_toy(toy_config(batch_size=4, grad_accum=2, grad_clip=0.0, adam_eps=10.0), tmp_path / "accum")
    run_toy(toy_config(batch_size=8, grad_accum=1, grad_clip=0.0, adam_eps=10.0), tmp_path / "large")
    a = load_file(str(tmp_path / "accum/checkpoints/step_000004/model.safetensors"))
    b = load_file(str(tmp_path / "large/checkpoints/step_000004/model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_warmup_ramps_the_learning_rate(tmp_path):
    run_toy(toy_config(warmup_steps=4, lr=0.1), tmp_path)
    lrs = [r["lr"] for r in logs(tmp_path) if "lr" in r]
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1])  # step n uses n / 4 of the rate, then all of it


def test_bf16_autocast_runs_on_cpu(tmp_path):
    seen: list = []
    run_toy(toy_config(steps=1, mixed_precision="bf16"), tmp_path / "bf16", build=toy_build(seen=seen))
    run_toy(toy_config(steps=1), tmp_path / "fp32", build=toy_build(seen=seen))
    assert seen == [torch.bfloat16, torch.float32]


def test_training_compile_runs_the_step_through_torch_compile_and_trains_the_same_weights(tmp_path, monkeypatch):
    graphs: list = []

    def counting_backend(graph, example_inputs):  # dynamo hands each captured graph here
        graphs.append(graph)
        return graph.forward

    monkeypatch.setattr(loop, "COMPILE_BACKEND", counting_backend)
    run_toy(toy_config(compile=True, grad_clip=0.0), tmp_path / "compiled")
    assert graphs, "training.compile did not send the forward through torch.compile"
    run_toy(toy_config(grad_clip=0.0), tmp_path / "eager")
    compiled = load_file(str(tmp_path / "compiled/checkpoints/step_000004/model.safetensors"))
    eager = load_file(str(tmp_path / "eager/checkpoints/step_000004/model.safetensors"))
    assert sorted(compiled) == sorted(eager) == ["frozen", "linear.bias", "linear.weight"]  # no _orig_mod. prefix
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], atol=1e-6, rtol=0)
    ema = load_file(str(tmp_path / "compiled/export/toy.safetensors"))
    assert not torch.equal(ema["linear.weight"], Toy().linear.weight.detach())  # the EMA followed the training


def test_training_compile_is_refused_under_a_sharding_engine(tmp_path, monkeypatch):
    monkeypatch.setattr(loop.sharded, "engine_managed", lambda accelerator: True)
    with pytest.raises(ValueError, match="training.compile works for single-process and DDP runs"):
        run_toy(toy_config(compile=True), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_non_finite_loss_stops_with_step_and_captions(tmp_path):
    calls = []

    def loss(model, batch):
        calls.append(1)
        value = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        return {"loss": value * float("nan") if len(calls) == 3 else value}

    with pytest.raises(TrainingError, match=r"step 3.*sample \d+"):
        run_toy(toy_config(checkpoint_every=1), tmp_path, build=toy_build(loss=loss))
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000002"  # nothing saved after the NaN


class NoSamples(IterableDataset):
    def __iter__(self):
        return iter(())


@pytest.mark.parametrize("dataset, message", [([], "empty"), (NoSamples(), "yielded nothing")])
def test_a_data_set_that_yields_nothing_is_an_error(tmp_path, dataset, message):
    with pytest.raises(ValueError, match=message):
        run_toy(toy_config(), tmp_path, build=toy_build(dataset=dataset))


def test_existing_run_needs_resume_and_a_matching_config(tmp_path):
    run_toy(toy_config(steps=2), tmp_path)
    with pytest.raises(ValueError, match="--resume"):
        run_toy(toy_config(steps=2), tmp_path)
    changed = toy_config(steps=4)
    changed.clip.text_layers = 3
    with pytest.raises(ValueError, match=r"clip\.text_layers \(checkpoint 2, now 3\)"):
        run_toy(changed, tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"training\.clip_checkpoint \(checkpoint None, now 'other/clip': the frozen"):
        run_toy(toy_config(steps=4, clip_checkpoint="other/clip"), tmp_path, resume=True)
    run_toy(toy_config(steps=4, lr=0.01), tmp_path, resume=True)  # training settings may change
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000004"


def test_an_interrupted_save_leaves_latest_intact(tmp_path, monkeypatch):
    real_save, saves = train_checkpoint.save_model, []

    def failing_save(model, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 4:  # the EMA weights of the second checkpoint
            raise OSError("disk full")
        return real_save(model, path, *args, **kwargs)

    monkeypatch.setattr(train_checkpoint, "save_model", failing_save)
    with pytest.raises(OSError, match="disk full"):
        run_toy(toy_config(steps=2, checkpoint_every=1), tmp_path)
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text() == "step_000001"
    assert not (root / "step_000002").exists()
    assert train_checkpoint.latest_checkpoint(tmp_path) == root / "step_000001"
    monkeypatch.setattr(train_checkpoint, "save_model", real_save)
    run_toy(toy_config(steps=2, checkpoint_every=1), tmp_path, resume=True)
    assert (root / "latest").read_text() == "step_000002"
    assert not list(root.glob(".tmp-*"))  # the broken attempt was cleaned up


def test_bad_intervals_and_yaml_no_are_handled(tmp_path):
    from unclip.config import Precision, load_stage_config

    with pytest.raises(ValueError, match="checkpoint_every must be at least 1"):
        run_toy(toy_config(checkpoint_every=0), tmp_path)
    # YAML reads an unquoted `no` as False: it still means mixed_precision "no"
    cfg = load_stage_config(ROOT / "configs/tiny/decoder.yaml", ["training.mixed_precision=no"])
    assert cfg.training.mixed_precision is Precision.no


def test_ema_warms_up_and_copies_frozen_parameters():
    model = Toy()
    ema = EMA(model, decay=0.99)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    before = ema.model.linear.weight.clone()
    with torch.no_grad():
        model.linear.weight.add_(1.0)
        model.frozen.fill_(5.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.linear.weight, before + 0.9)
    assert torch.equal(ema.model.frozen, torch.full((2,), 5.0))
    assert ema.updates == 1 and ema.current_decay() == pytest.approx(2 / 11)


# ----------------------------------------------------------------------------------------------
# the batch stream


def _captions(stream, n):
    return [c for _, batch in zip(range(n), stream) for c in batch["caption"]]


class Plain(IterableDataset):  # an iterable without item(i): read in order, restarted when it ends
    def __iter__(self):
        return iter(toy_data(10))


def test_batch_stream_resumes_exactly_and_splits_processes():
    data = toy_data(10)
    full = _captions(batch_stream(data, 3, seed=1), 8)  # 24 samples: crosses two epochs of 10
    assert _captions(batch_stream(data, 3, seed=1, start_sample=15), 3) == full[15:]
    assert sorted(full[:10]) == sorted(d["caption"] for d in data)  # an epoch is a permutation
    ranks = [_captions(batch_stream(data, 5, seed=1, rank=r, world_size=2), 1) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(d["caption"] for d in data)
    plain = _captions(batch_stream(Plain(), 3), 6)
    assert _captions(batch_stream(Plain(), 3, start_sample=12), 2) == plain[10:]  # batches of 3, 3, 3, 1, …


def test_batches_are_pinned_only_for_a_gpu(tmp_path, monkeypatch):
    from unclip.training import batches

    pinned, loader = [], batches.DataLoader
    monkeypatch.setattr(batches, "DataLoader", lambda *a, **k: pinned.append(k["pin_memory"]) or loader(*a, **k))
    next(batch_stream(toy_data(), 4, pin_memory=True))
    next(batch_stream(toy_data(), 4))
    run_toy(toy_config(steps=1), tmp_path)  # the loop on this CPU: no pinning
    assert pinned == [True, False, False]


def test_batch_stream_of_the_shapes_set_is_independent_of_workers():
    from unclip.data.shapes import ShapesDataset

    data = ShapesDataset(resolution=8, seed=3)
    order = _captions(batch_stream(data, 2), 4)
    assert order == [data.item(i)["caption"] for i in range(8)]
    assert _captions(batch_stream(data, 2, start_sample=6), 1) == order[6:]
    assert _captions(batch_stream(data, 2, num_workers=2), 4) == order


# ----------------------------------------------------------------------------------------------
# every stage, through the CLI, on its tiny config


def cli(*argv: str) -> int:
    from unclip.cli import main

    return main([*argv])


def test_overrides_may_follow_the_options():
    from unclip.cli import build_parser

    args = build_parser().parse_args(["train", "decoder", "a.b=1", "--config", "c.yaml", "--output", "o", "x.y=2"])
    assert (args.stage, args.config, args.overrides) == ("decoder", "c.yaml", ["a.b=1", "x.y=2"])


STAGE_RUNS = {  # config → (stage, components in export/)
    "clip": ("clip", ["clip"]),
    "prior": ("prior", ["clip", "prior"]),
    "decoder": ("decoder", ["clip", "decoder"]),
    "upsampler_256": ("upsampler", ["upsampler_256"]),
    "upsampler_1024": ("upsampler", ["upsampler_1024"]),
}


@pytest.mark.parametrize("config", list(STAGE_RUNS))
def test_every_stage_trains_checkpoints_and_exports_through_the_cli(tmp_path, config):
    from unclip.checkpoint import load_component

    stage, components = STAGE_RUNS[config]
    out = tmp_path / "run"
    assert cli("train", stage, "--config", str(ROOT / f"configs/tiny/{config}.yaml"), "--output", str(out),
               "--no-progress", "training.steps=3", "training.checkpoint_every=3", "training.sample_every=3") == 0
    assert (out / "checkpoints" / "latest").read_text() == "step_000003"
    assert sorted(p.name for p in (out / "export").iterdir()) == components
    for name in components:
        module = load_component(out / "export" / name)
        assert not module.training
    entries = [r for r in logs(out) if "loss" in r]
    assert [r["step"] for r in entries] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in entries), entries
    if stage in ("decoder", "upsampler"):
        assert (out / "samples" / "step_000003.png").is_file()
    if stage == "upsampler":  # sampled on tiles of its training crop's side (a quarter of 64 or 128)
        stored = json.loads((out / "export" / config / "config.json").read_text())
        assert stored["tile"] == {"upsampler_256": 16, "upsampler_1024": 32}[config]
    if stage == "prior":
        (monitor,) = [r for r in logs(out) if "prior/cos_pred" in r]
        prior = load_component(out / "export" / "prior")
        assert not torch.equal(prior.transformer.clip_std, torch.ones_like(prior.transformer.clip_std))
        # the monitor samples the EMA weights, which the export ships: recompute it from the export
        expected = prior_monitor(load_component(out / "export" / "clip"), prior)
        assert monitor["prior/cos_text_baseline"] == pytest.approx(expected["baseline"], abs=1e-5)
        assert monitor["prior/cos_pred"] == pytest.approx(expected["pred"], abs=1e-4)
    if stage == "clip":
        (monitor,) = [r for r in logs(out) if "clip/top1" in r]
        expected = clip_monitor(load_component(out / "export" / "clip"))
        assert monitor["clip/top1"] == pytest.approx(expected["top1"], abs=1e-6)
        assert monitor["clip/relation"] == pytest.approx(expected["relation"], abs=1e-6)


@torch.no_grad()
def prior_monitor(clip, prior) -> dict[str, float]:
    """The prior stage's monitor, by hand: mean cos(sampled z_i, true z_i) and cos(z_t, true z_i)
    over the held-out shapes, sampled with DDPM from seed 0 at the tiny config's steps and guidance."""
    from unclip.config import DataConfig, load_stage_config
    from unclip.diffusion.sampling import sample_loop
    from unclip.diffusion.schedule import Sampler, make_scheduler
    from unclip.pipeline.denoisers import prior_denoiser
    from unclip.training.stages.common import held_out_samples
    from unclip.training.stages.prior import MONITOR_COUNT

    diffusion = load_stage_config(ROOT / "configs/tiny/prior.yaml").diffusion
    images, captions = held_out_samples(DataConfig(), clip.image_size, MONITOR_COUNT)
    true, text = clip.encode_image(images), clip.encode_text(captions)
    cos = lambda a, b: (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).mean().item()  # noqa: E731
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(true.shape, generator=g)
    model_fn = prior_denoiser(prior, text, clip.encode_text([""]), diffusion.guidance_scale)
    x0 = sample_loop(model_fn, make_scheduler(diffusion, Sampler.ddpm), x_T, diffusion.sample_steps, generator=g,
                     progress=False)
    return {"baseline": cos(text.emb, true), "pred": cos(prior.unstandardise(x0), true)}


@torch.no_grad()
def clip_monitor(clip) -> dict[str, float]:
    """The CLIP stage's monitor, by hand: top-1 image→caption retrieval over the held-out shapes
    (a hit when the retrieved caption reads the same) and the share of two-object renders closer
    to their own caption than to the relation-inverted one."""
    from unclip.config import DataConfig
    from unclip.evaluation.probes import relation_probe
    from unclip.training.stages.clip import MONITOR_COUNT
    from unclip.training.stages.common import held_out_samples

    unit = lambda x: F.normalize(x, dim=-1)  # noqa: E731
    text = lambda captions: unit(clip.model.encode_text(clip.tokenize(captions)))  # noqa: E731
    images, captions = held_out_samples(DataConfig(), clip.image_size, MONITOR_COUNT)
    best = (unit(clip.encode_image(images)) @ text(captions).T).argmax(1).tolist()
    top1 = sum(captions[j] == captions[i] for i, j in enumerate(best)) / len(captions)
    pairs, own, swapped = relation_probe(clip.image_size, MONITOR_COUNT)
    z = unit(clip.encode_image(pairs))
    return {"top1": top1, "relation": ((z * text(own)).sum(-1) > (z * text(swapped)).sum(-1)).float().mean().item()}


def test_train_refuses_a_config_of_another_stage(tmp_path, capsys):
    assert cli("train", "prior", "--config", str(ROOT / "configs/tiny/decoder.yaml"), "--output", str(tmp_path)) == 2
    assert "configures the decoder stage, not prior" in capsys.readouterr().err


def test_train_names_a_missing_data_path_and_an_output_that_is_a_file(tmp_path, capsys):
    decoder = str(ROOT / "configs/tiny/decoder.yaml")
    assert cli("train", "decoder", "--config", decoder, "--output", str(tmp_path / "run"), "data.kind=emoji") == 2
    assert "data.kind=emoji needs data.path" in capsys.readouterr().err
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    assert cli("train", "decoder", "--config", decoder, "--output", str(taken)) == 2
    assert f"--output {taken} is a file" in capsys.readouterr().err and taken.read_text() == "mine"


def test_an_upsampler_trains_on_native_low_res_renders_of_its_own_side_only(tmp_path, capsys):
    config = str(ROOT / "configs/tiny/upsampler_256.yaml")
    assert cli("train", "upsampler", "--config", config, "--output", str(tmp_path / "bad"), "--no-progress",
               "data.low_res=16", "training.steps=1") == 2
    assert "data.low_res=16 but this upsampler takes 32×32 images" in capsys.readouterr().err
    assert cli("train", "upsampler", "--config", config, "--output", str(tmp_path / "ok"), "--no-progress",
               "data.low_res=32", "training.steps=1", "training.sample_every=1") == 0
    assert [r["step"] for r in logs(tmp_path / "ok") if "loss" in r] == [1]
    (monitor,) = [r for r in logs(tmp_path / "ok") if "upsampler/sample_mse" in r]  # on native renders too
    assert math.isfinite(monitor["upsampler/sample_mse"])


def _wrong_config(stage: str) -> str:
    return "prior" if stage == "decoder" else "decoder"


@pytest.mark.parametrize("stage", ["clip", "prior", "decoder", "upsampler"])
def test_entry_scripts_run_unclip_train_for_their_stage(tmp_path, monkeypatch, capsys, stage):
    """Each train/<stage>.py, run as __main__ in this process, is `unclip train <stage>`: handed
    another stage's config, it exits 2 with the CLI's one-line message naming its own stage."""
    other = _wrong_config(stage)
    config = str(ROOT / f"configs/tiny/{other}.yaml")
    script = str(ROOT / "train" / f"{stage}.py")
    monkeypatch.setattr(sys, "argv", [script, "--config", config, "--output", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(script, run_name="__main__")
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip().splitlines() == [f"unclip train: error: {config} configures the {other} stage, not {stage}"]
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_an_entry_script_in_a_real_process_exits_2_with_one_line(tmp_path):
    """One real process, started as a user starts it (`python train/<stage>.py ...`):
    exit status 2, the one-line message, no traceback."""
    stage, other = "upsampler", _wrong_config("upsampler")
    config = str(ROOT / f"configs/tiny/{other}.yaml")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, str(ROOT / "train" / f"{stage}.py"), "--config", config, "--output",
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    message = f"unclip train: error: {config} configures the {other} stage, not {stage}"
    assert done.stderr.strip().splitlines() == [message]


def test_cosine_decay_anneals_from_the_start_step_to_the_final_share(tmp_path):
    run_toy(toy_config(steps=6, lr=0.1, lr_decay="cosine", lr_decay_start=2, lr_final=0.1), tmp_path)
    lrs = [r["lr"] for r in logs(tmp_path) if "lr" in r]
    # steps 1-2 at the full rate, then half a cosine over the 4 steps to 2..6, ending at 0.1 of it
    left = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx([0.1, 0.1] + [0.1 * (0.1 + 0.9 * f) for f in left])
    assert lrs[2:] == sorted(lrs[2:], reverse=True) and lrs[-1] < 0.1


def test_linear_decay_after_a_resume_continues_from_the_restored_step(tmp_path):
    run_toy(toy_config(steps=4, lr=0.1), tmp_path)  # a constant-rate run ...
    run_toy(toy_config(steps=8, lr=0.1, lr_decay="linear", lr_decay_start=4), tmp_path, resume=True)
    lrs = [r["lr"] for r in logs(tmp_path) if "lr" in r]  # ... annealed over its next four steps
    assert lrs == pytest.approx([0.1] * 4 + [0.1, 0.075, 0.05, 0.025])


def test_a_final_share_outside_zero_to_one_is_refused():
    with pytest.raises(ConfigError, match="lr_final"):
        TrainingConfig(lr_final=2.0)


def test_a_resumed_run_takes_the_new_peak_rate_and_schedule_from_its_config(tmp_path):
    # the first part annealed to 0; the second raises the peak and decays again from step 6
    run_toy(toy_config(steps=4, lr=0.1, lr_decay="linear", lr_decay_start=0), tmp_path)
    run_toy(toy_config(steps=8, lr=0.2, lr_decay="linear", lr_decay_start=6, weight_decay=0.01), tmp_path,
            resume=True)
    lrs = [r["lr"] for r in logs(tmp_path) if "lr" in r]
    assert lrs == pytest.approx([0.1, 0.075, 0.05, 0.025] + [0.2, 0.2, 0.2, 0.1])


def test_resumed_optimiser_settings_come_from_the_config():
    from unclip.training.loop import apply_training_settings, lr_factor

    def optimiser(tc):  # as the loop builds them, before the checkpoint's states are loaded
        opt = torch.optim.AdamW([weight], lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2), weight_decay=tc.weight_decay)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(tc))

    weight = torch.nn.Parameter(torch.zeros(2))
    opt, scheduler = optimiser(TrainingConfig(steps=10, lr=0.1))
    for _ in range(3):
        opt.step()
        scheduler.step()
    new = TrainingConfig(steps=10, lr=0.3, adam_beta2=0.95, weight_decay=0.05, lr_decay="cosine", lr_decay_start=3)
    resumed, resumed_scheduler = optimiser(new)
    resumed.load_state_dict(opt.state_dict())
    resumed_scheduler.load_state_dict(scheduler.state_dict())
    apply_training_settings(resumed, resumed_scheduler, new)
    group = resumed.param_groups[0]
    assert (group["lr"], group["initial_lr"], group["betas"], group["weight_decay"]) == (0.3, 0.3, (0.9, 0.95), 0.05)
    resumed.step()
    resumed_scheduler.step()  # one of the seven steps of the cosine from step 3 to 10
    assert group["lr"] == pytest.approx(0.3 * 0.5 * (1 + math.cos(math.pi / 7)))


def test_a_resume_with_another_batch_size_continues_at_the_samples_consumed(tmp_path):
    def recording(captions):
        def loss(model, batch):
            captions.extend(batch["caption"])
            return {"loss": ((model(batch["x"]) - batch["y"]) ** 2).mean()}
        return loss

    whole, parts = [], []
    run_toy(toy_config(steps=4, batch_size=2, grad_accum=2, checkpoint_every=100), tmp_path / "whole",
            build=toy_build(loss=recording(whole)))  # 16 samples of the 32: half an epoch
    run_toy(toy_config(steps=2, batch_size=2, grad_accum=2), tmp_path / "parts", build=toy_build(loss=recording(parts)))
    state = json.loads((tmp_path / "parts" / "checkpoints" / "step_000002" / "state.json").read_text())
    assert state["samples"] == 8
    run_toy(toy_config(steps=3, batch_size=8), tmp_path / "parts", build=toy_build(loss=recording(parts)),
            resume=True)  # one step of 8 samples: the 8 an uninterrupted run would have read next
    assert parts == whole


def test_the_clip_loss_bounds_the_temperature_itself():
    """open_clip keeps logit_scale ≤ log 100 by clamping the parameter after each step; under
    ZeRO-3 that clamp meets an empty shard, so the loss bounds the scale it uses as well."""
    from unclip.config import load_stage_config
    from unclip.training.stages import build_task
    from unclip.training.stages.common import StageContext

    cfg = load_stage_config(ROOT / "configs" / "tiny" / "clip.yaml")
    task = build_task(cfg, StageContext(torch.device("cpu"), 0, 1))
    batch = {"image": torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1,
             "caption": ["a red circle", "a blue square", "a green triangle", "a red square"]}

    def loss_at(log_scale: float) -> float:
        with torch.no_grad():
            task.model.logit_scale.fill_(log_scale)
            return task.loss(task.model, batch)["loss"].item()

    assert loss_at(math.log(1000)) == pytest.approx(loss_at(math.log(100)), rel=1e-6)
    assert loss_at(math.log(10)) != pytest.approx(loss_at(math.log(100)), rel=1e-3)
    task.after_step(task.model)  # and the parameter itself where this rank holds it whole
    assert task.model.logit_scale.item() == pytest.approx(math.log(100))
