"""Upsamplers run on overlapping tiles (``unclip.networks.tiling``): the blend, the plan's
``tile`` option, the stored default and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from unclip.cli import main as cli
from unclip.networks.tiling import ramp, tile_starts, tiled


@pytest.mark.parametrize("side, tile, overlap", [(64, 16, 2), (100, 32, 4), (32, 32, 4), (20, 64, 8), (70, 16, 0)])
def test_tiles_cover_the_image_and_overlap_by_at_least_the_overlap(side, tile, overlap):
    starts = tile_starts(side, tile, overlap)
    assert starts[0] == 0 and starts[-1] == max(0, side - tile)
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_a_pointwise_network_gives_the_same_image_tiled_or_whole():
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 3, 40, 40, generator=g), torch.randn(2, 3, 40, 40, generator=g)
    conv = torch.nn.Conv2d(6, 3, 1)

    def fn(a, b):
        return conv(torch.cat([a, b], 1))

    with torch.no_grad():
        assert torch.allclose(tiled(fn, (x, cond), 16, 4), fn(x, cond), atol=1e-6)
        assert torch.equal(tiled(fn, (x, cond), 40, 4), fn(x, cond).float())  # one tile: the whole image


def test_overlaps_blend_and_borders_keep_full_weight():
    assert torch.equal(ramp(8, 2, True, True), torch.ones(8))
    rise = ramp(8, 2, False, True)
    assert rise[:2].tolist() == [0.25, 0.75] and rise[2:].eq(1).all()
    # each tile returns its own constant: the blend of two neighbours lies between them, and pixels
    # only one tile covers keep that tile's value
    calls = iter(range(100))
    out = tiled(lambda a: torch.full_like(a, float(next(calls))), (torch.zeros(1, 1, 16, 28),), 16, 4)
    row = out[0, 0, 0]
    assert row[0] == 0 and row[-1] == 1 and ((row >= 0) & (row <= 1)).all()
    assert 0 < row[13] < 1  # inside the overlap


def test_tiles_change_what_a_normalising_network_sees():
    """GroupNorm normalises over the tile: tiled and whole differ where the statistics do."""
    norm = torch.nn.GroupNorm(1, 3, affine=False)
    x = torch.zeros(1, 3, 32, 32)
    x[..., :8, :8] = 1  # an object in one corner, flat elsewhere
    whole, tiles = norm(x), tiled(norm, (x,), 16, 0)
    assert (whole[..., 20:, 20:] - tiles[..., 20:, 20:]).abs().max() > 0.1


def test_the_plan_takes_tile_per_upsampler_and_refuses_it_elsewhere(tiny_pipeline):
    chain = tiny_pipeline.upsampler_chain(128)
    assert {run.tile for run in tiny_pipeline.plan(chain).values()} == {None}  # the random pipeline's default
    plan = tiny_pipeline.plan(chain, tile={"upsampler_256": 16, "upsampler_1024": 0})
    assert [plan[s].tile for s in chain] == [16, None]
    assert {run.tile for run in tiny_pipeline.plan(chain, tile={"upsampler": 32}).values()} == {32}
    with pytest.raises(ValueError, match=r"^tile: only the upsamplers"):
        tiny_pipeline.plan(["decoder"], tile={"decoder": 16})
    with pytest.raises(ValueError, match=r"^tile: expected a whole number"):
        tiny_pipeline.plan(chain, tile=-4)


def test_upscale_on_tiles_runs_and_refuses_a_tile_the_network_cannot_take(tiny_pipeline):
    image = Image.new("RGB", (32, 32), "red")
    kwargs = dict(size=128, steps=1, sampler="ddpm", seed=0, progress=False)
    whole = np.asarray(tiny_pipeline.upscale(image, **kwargs), dtype=int)
    one_tile = np.asarray(tiny_pipeline.upscale(image, tile=128, **kwargs), dtype=int)
    assert np.array_equal(whole, one_tile)  # a tile as large as the image is the whole image
    tiles = np.asarray(tiny_pipeline.upscale(image, tile={"upsampler_256": 16, "upsampler_1024": 32}, **kwargs),
                       dtype=int)
    assert tiles.shape == (128, 128, 3) and not np.array_equal(tiles, whole)
    with pytest.raises(ValueError, match=r"^tile: 6 is not a multiple of 4"):
        tiny_pipeline.upscale(image, tile={"upsampler_1024": 6}, **kwargs)


def test_a_stored_tile_is_the_default_and_the_cli_overrides_it(tiny_pipeline_dir, tmp_path, capsys):
    from unclip.pipeline import UnCLIPPipeline

    folder = tmp_path / "pipe"
    pipe = UnCLIPPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.save_pretrained(folder)
    config = folder / "upsampler_1024" / "config.json"
    stored = json.loads(config.read_text())
    config.write_text(json.dumps({**stored, "tile": 32}))
    loaded = UnCLIPPipeline.from_pretrained(folder)
    assert loaded.plan(["upsampler_1024"])["upsampler_1024"].tile == 32
    assert loaded.plan(["upsampler_1024"], tile=0)["upsampler_1024"].tile is None
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "blue.png")
    args = ["--checkpoint", str(folder), "--steps", "1", "--seed", "0", "--quiet", "--out", str(tmp_path / "out")]
    assert cli(["upscale", str(tmp_path / "blue.png"), "--size", "128", "--tile", "0", *args]) == 0
    assert cli(["upscale", str(tmp_path / "blue.png"), "--size", "128", "--tile", "upsampler_1024=30", *args]) == 2
    assert "tile: 30 is not a multiple of 4" in capsys.readouterr().err
