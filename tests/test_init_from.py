"""training.init_from: fine-tuning starts from a component folder's weights."""

from pathlib import Path

import pytest
import torch

from unclip.checkpoint import init_weights, load_component, save_component
from unclip.cli import main
from unclip.config import DecoderConfig, PriorConfig
from unclip.networks.decoder import Decoder
from unclip.networks.prior import Prior

ROOT = Path(__file__).resolve().parents[1]


def test_init_weights_copies_every_shared_parameter_and_names_the_new_ones(tmp_path):
    torch.manual_seed(0)
    save_component(Decoder(DecoderConfig()), tmp_path / "decoder", dtype=torch.float16)
    torch.manual_seed(1)
    target = Decoder(DecoderConfig(coordinates=True))
    assert init_weights(target, tmp_path / "decoder") == ["unet.conv_in.position.weight"]
    source = load_component(tmp_path / "decoder")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert target.unet.conv_in.weight.dtype == torch.float32  # fp16 files load into fp32 modules


def test_init_weights_refuses_another_component_or_other_shapes(tmp_path):
    save_component(Prior(PriorConfig()), tmp_path / "prior")
    with pytest.raises(ValueError, match="holds a prior, this run trains a decoder"):
        init_weights(Decoder(DecoderConfig()), tmp_path / "prior")
    save_component(Decoder(DecoderConfig(block_out_channels=(32, 96))), tmp_path / "wide")
    with pytest.raises(ValueError, match="different shapes"):
        init_weights(Decoder(DecoderConfig()), tmp_path / "wide")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        init_weights(Decoder(DecoderConfig()), tmp_path / "nothing")


def test_a_decoder_run_fine_tunes_from_an_export_through_the_cli(tmp_path, capsys):
    config = str(ROOT / "configs/tiny/decoder.yaml")
    short = ["--no-progress", "training.steps=1", "training.sample_every=100", "training.checkpoint_every=100"]
    assert main(["train", "decoder", "--config", config, "--output", str(tmp_path / "a"), *short]) == 0
    start = load_component(tmp_path / "a" / "export" / "decoder")
    # lr 0: the fine-tuned export must equal its starting point (plus the new position conv)
    assert main(["train", "decoder", "--config", config, "--output", str(tmp_path / "b"), *short, "training.lr=0",
                 "decoder.coordinates=true", f"training.init_from={tmp_path / 'a' / 'export' / 'decoder'}"]) == 0
    assert "new parameters: unet.conv_in.position.weight" in capsys.readouterr().out
    tuned = load_component(tmp_path / "b" / "export" / "decoder")
    for key, value in start.state_dict().items():
        assert torch.equal(tuned.state_dict()[key], value), key
    assert tuned.cfg.coordinates and tuned.unet.conv_in.position.weight.abs().sum() == 0


def test_a_clip_run_fine_tunes_from_a_clip_export(tmp_path):
    """The CLIP stage trains a bare open_clip model; its export wraps it (weights under ``model.``)."""
    config = str(ROOT / "configs/tiny/clip.yaml")
    short = ["--no-progress", "training.steps=1", "training.sample_every=100", "training.checkpoint_every=100"]
    assert main(["train", "clip", "--config", config, "--output", str(tmp_path / "a"), *short]) == 0
    start = load_component(tmp_path / "a" / "export" / "clip")
    assert main(["train", "clip", "--config", config, "--output", str(tmp_path / "b"), *short, "training.lr=0",
                 f"training.init_from={tmp_path / 'a' / 'export' / 'clip'}"]) == 0
    tuned = load_component(tmp_path / "b" / "export" / "clip")
    for key, value in start.state_dict().items():
        assert torch.equal(tuned.state_dict()[key], value), key
