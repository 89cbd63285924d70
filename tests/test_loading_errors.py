"""Folders and networks that cannot work together are named before anything runs: weights that
do not fit their config.json, Git LFS pointers in place of weights, and a decoder level where
diffusers' AddedKV attention would fail (the reference's gotcha 3)."""

import json
import shutil

import pytest
import torch

from unclip.pipeline import UnCLIPPipeline


def test_weights_that_do_not_fit_their_config_or_are_no_weights_are_named(tiny_pipeline_dir, tmp_path, capsys):
    """A config.json edited by hand (or weights from another run) names the folder and the keys;
    a Git LFS pointer in place of the weights says so; the CLI answers both in one line (exit 2)."""
    from unclip.checkpoint import WEIGHTS_NAME, load_component
    from unclip.cli import main

    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, folder)
    config = json.loads((folder / "decoder" / "config.json").read_text())
    config["config"]["block_out_channels"] = [2 * c for c in config["config"]["block_out_channels"]]
    (folder / "decoder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"decoder: the weights do not fit the network its config describes "
                                         r"\(\d+ of another shape \(file vs config\): "):
        load_component(folder / "decoder")
    assert main(["generate", "a red circle", "--checkpoint", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert "do not fit" in capsys.readouterr().err
    (folder / "prior" / WEIGHTS_NAME).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    with pytest.raises(ValueError, match="is a Git LFS pointer, not the weights"):
        load_component(folder / "prior")


def test_a_decoder_level_with_as_many_image_tokens_as_context_tokens_is_named(tiny_pipeline):
    """77 text + 4 extra tokens = 81 = 9²: diffusers' AddedKV attention would leave the mask
    unpadded at a 9×9 level (here the middle block's) and fail inside the forward."""
    from unclip.config import DecoderConfig
    from unclip.networks.decoder import Decoder, check_context_fits

    cfg = DecoderConfig(sample_size=18, block_out_channels=(32, 64), attention_resolutions=(),
                        clip_embeddings_dim=32, cross_attention_dim=64)
    assert tiny_pipeline.clip.context_length == 77
    with pytest.raises(ValueError, match="attention at side 9 sees 81 image tokens, as many as its 81 context"):
        UnCLIPPipeline(tiny_pipeline.clip, None, Decoder(cfg))
    check_context_fits(cfg, 78)  # any other length is fine
    decoder = Decoder(cfg)
    with pytest.raises(RuntimeError):  # what the check stands in front of
        decoder(torch.randn(1, 3, 18, 18), torch.tensor([3]), image_emb=torch.randn(1, 32),
                text_emb=torch.randn(1, 32), text_tokens=torch.randn(1, 77, 32),
                text_mask=torch.ones(1, 77, dtype=torch.bool))
