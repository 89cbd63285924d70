"""``training.gradient_checkpointing``: the same gradients as without, activations recomputed in
the backward pass, for every trainable network (tiny configs)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unclip.cli import main
from unclip.config import load_stage_config
from unclip.networks.build import build_network, enable_gradient_checkpointing

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"
B = 2


def inputs(name: str, cfg) -> dict:
    """Fixed random inputs for the network of ``configs/tiny/<name>.yaml``."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    t = torch.tensor([10, 500])
    if name == "clip":
        return {"image": rand(B, 3, cfg.clip.image_size, cfg.clip.image_size),
                "text": torch.randint(0, 1000, (B, cfg.clip.context_length), generator=g)}
    d = cfg.clip.embed_dim if hasattr(cfg, "clip") else None
    text = {"text_emb": rand(B, d), "text_tokens": rand(B, cfg.clip.context_length, d),
            "text_mask": torch.ones(B, cfg.clip.context_length, dtype=torch.bool)} if d else {}
    if name == "prior":
        return {"x_t": rand(B, d), "t": t, **text}
    if name == "prior_ar":
        return {"codes": torch.randint(0, cfg.prior.buckets, (B, 5), generator=g), "dot": torch.tensor([1, 2]),
                **text}
    side = cfg.decoder.sample_size if name == "decoder" else cfg.upsampler.sample_size
    if name == "decoder":
        return {"x_t": rand(B, 3, side, side), "t": t, "image_emb": rand(B, d), **text}
    low = cfg.upsampler.low_res_size
    return {"x_t": rand(B, 3, side, side), "t": t, "low_res": rand(B, 3, low, low)}


def grads(network: torch.nn.Module, batch: dict) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of a fixed function of the output, and the elements the forward pass kept for
    the backward pass outside checkpointed blocks (inside them nothing is kept: recomputed)."""
    kept = []

    def pack(tensor):
        kept.append(tensor.numel())
        return tensor

    network.train().zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        if "image" in batch:
            out = torch.cat([network.encode_image(batch["image"]), network.encode_text(batch["text"])], dim=1)
        else:
            args = [batch.pop(k) for k in ("x_t", "t", "codes") if k in batch]
            out = network(*args, **batch)
    (out.float() ** 2).mean().backward()
    return {n: p.grad.clone() for n, p in network.named_parameters() if p.grad is not None}, sum(kept)


@pytest.mark.parametrize("name", ["clip", "prior", "prior_ar", "decoder", "upsampler_256"])
def test_the_same_gradients_with_activations_recomputed(name):
    cfg = load_stage_config(TINY / f"{name}.yaml")
    torch.manual_seed(0)
    plain = build_network(cfg)  # for the CLIP stage: open_clip's model itself
    checkpointed = copy.deepcopy(plain)
    enable_gradient_checkpointing(checkpointed)
    expected, plain_kept = grads(plain, inputs(name, cfg))
    got, kept = grads(checkpointed, inputs(name, cfg))
    assert kept < 0.75 * plain_kept  # the blocks' activations are not kept (measured: 0.10 to 0.57)
    assert expected.keys() == got.keys() and expected
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-6)
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()


def test_a_copy_of_a_checkpointed_network_runs_on_its_own_weights():
    """The EMA is a deep copy: it must not call the trained network's blocks."""
    cfg = load_stage_config(TINY / "prior_ar.yaml")
    network = build_network(cfg)
    enable_gradient_checkpointing(network)
    shadow = copy.deepcopy(network).eval()
    batch = inputs("prior_ar", cfg)
    before = shadow(batch["codes"], **{k: v for k, v in batch.items() if k != "codes"})
    with torch.no_grad():
        for p in network.parameters():
            p.add_(1.0)
    after = shadow(batch["codes"], **{k: v for k, v in batch.items() if k != "codes"})
    torch.testing.assert_close(after, before)


def test_training_with_gradient_checkpointing_ends_with_the_same_weights(tmp_path):
    def train(out: Path, *extra: str) -> dict[str, torch.Tensor]:
        args = ["train", "decoder", "--config", str(TINY / "decoder.yaml"), "--output", str(out), "--no-progress",
                "training.steps=2", "training.sample_every=1000", "training.checkpoint_every=2", *extra]
        assert main(args) == 0
        return load_file(str(out / "checkpoints" / "step_000002" / "model.safetensors"))

    plain = train(tmp_path / "plain")
    checkpointed = train(tmp_path / "checkpointed", "training.gradient_checkpointing=true")
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-4, atol=1e-6)
