"""Assembling separately trained stage exports into one (fp16) pipeline folder."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unclip.checkpoint import is_matrix, save_component
from unclip.pipeline import UnCLIPPipeline
from unclip.pipeline.assemble import assemble, find_exports

ROOT = Path(__file__).resolve().parents[1]


def write_runs(pipe: UnCLIPPipeline, root: Path, decoder_clip=None) -> Path:
    """A runs root laid out as training leaves it: <part>/export/<part>/, CLIP copies beside the prior and decoder."""
    save_component(pipe.clip, root / "clip" / "export" / "clip")
    save_component(pipe.prior, root / "prior" / "export" / "prior")
    save_component(pipe.clip, root / "prior" / "export" / "clip")
    save_component(pipe.decoder, root / "decoder" / "export" / "decoder")
    save_component(decoder_clip or pipe.clip, root / "decoder" / "export" / "clip")
    for slot, module in pipe.upsamplers.items():
        save_component(module, root / slot / "export" / slot)
    return root


def test_assembled_fp16_pipeline_keeps_buffers_and_generates_like_the_original(tiny_pipeline, tmp_path):
    runs = write_runs(tiny_pipeline, tmp_path / "runs")
    parts = find_exports(runs)
    assert set(parts) == {"clip", "prior", "decoder", *tiny_pipeline.upsamplers}
    out = assemble(parts, tmp_path / "packed", torch.float16)

    prior_state = load_file(str(out / "prior" / "model.safetensors"))
    stats = [k for k in prior_state if k.endswith(("clip_mean", "clip_std"))]
    assert len(stats) == 2 and all(prior_state[k].dtype == torch.float32 for k in stats)
    matrices = [k for k, v in tiny_pipeline.prior.state_dict().items() if is_matrix(v) and k in prior_state]
    assert matrices and all(prior_state[k].dtype == torch.float16 for k in matrices)

    packed = UnCLIPPipeline.from_pretrained(out)
    assert packed.sizes == tiny_pipeline.sizes
    a = torch.tensor(list(tiny_pipeline.generate("a red circle", size=32, steps=3, seed=1, progress=False)[0].getdata()))
    b = torch.tensor(list(packed.generate("a red circle", size=32, steps=3, seed=1, progress=False)[0].getdata()))
    assert (a - b).abs().float().mean() < 2.0  # fp16 rounding moves a pixel by at most a few levels on average


def test_stages_trained_on_another_clip_are_refused(tiny_pipeline, tmp_path):
    other = UnCLIPPipeline.from_configs(ROOT / "configs" / "tiny", seed=7).clip
    runs = write_runs(tiny_pipeline, tmp_path / "runs", decoder_clip=other)
    with pytest.raises(ValueError, match="trained on the CLIP in"):
        assemble(find_exports(runs), tmp_path / "packed")


def test_assemble_script_reports_a_missing_runs_root(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "train" / "assemble.py"), "--runs", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 2 and "no exports under" in done.stderr and "Traceback" not in done.stderr


def test_stages_taken_from_a_pipeline_folder_keep_its_sampling_settings(tmp_path):
    """A stage re-used from a shipped pipeline folder keeps the sampling settings it was shipped
    with, not the defaults."""
    import dataclasses
    import json

    pipe = UnCLIPPipeline.from_configs(ROOT / "configs" / "tiny", seed=0)
    decoder = pipe.sampling["decoder"]
    pipe.sampling["decoder"] = dataclasses.replace(decoder, diffusion=dataclasses.replace(decoder.diffusion,
                                                                                           guidance_scale=5.5))
    slot = next(iter(pipe.upsamplers))
    up = pipe.sampling[slot]
    pipe.sampling[slot] = dataclasses.replace(up, diffusion=dataclasses.replace(up.diffusion, sample_start=123))
    shipped = pipe.save_pretrained(tmp_path / "shipped")
    runs = tmp_path / "runs"
    for part in ("clip", "prior", "decoder", *pipe.upsamplers):  # runs/<part>/export/<part> → shipped/<part>
        (runs / part / "export").mkdir(parents=True)
        (runs / part / "export" / part).symlink_to(shipped / part)
    out = assemble(find_exports(runs), tmp_path / "again")
    stages = lambda root: UnCLIPPipeline.from_pretrained(root).sampling  # noqa: E731
    assert stages(out) == stages(shipped) == pipe.sampling
    assert stages(out)["decoder"].diffusion.guidance_scale == 5.5
    assert stages(out)[slot].diffusion.sample_start == 123
    assert json.loads((out / "decoder" / "config.json").read_text())["diffusion"]["guidance_scale"] == 5.5
