"""The frozen CLIP wrapper: token states after ln_final, EOT masks, raw embeddings, local weights."""

import pytest
import torch
from safetensors.torch import save_file

from unclip.checkpoint import load_clip, load_component, save_component
from unclip.config import ClipConfig
from unclip.data.images import pil_to_tensor, tensor_to_pil
from unclip.networks.clip import ClipEncoder


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return ClipEncoder(ClipConfig())


def test_text_encoding_matches_open_clip(clip):
    prompts = ["a large red circle in the top left on a white background", "wow!!", ""]
    enc = clip.encode_text(prompts)
    assert enc.tokens.shape == (3, 77, 32) and enc.emb.shape == (3, 32) and enc.mask.dtype == torch.bool
    ids = clip.tokenize(prompts)
    ref = clip.model.forward_intermediates(text=ids, text_indices=1, normalize=False, normalize_intermediates=True)
    assert torch.allclose(enc.tokens, ref["text_intermediates"][-1], atol=1e-5)  # after ln_final
    assert torch.allclose(enc.emb, clip.model.encode_text(ids, normalize=False), atol=1e-5)


def test_mask_runs_to_eot_even_over_token_zero(clip):
    ids = clip.tokenize(["wow!!", ""])
    enc = clip.encode_text(["wow!!", ""])
    eot = ids.argmax(-1)
    assert enc.mask.sum(1).tolist() == (eot + 1).tolist()
    assert enc.mask[1].sum() == 2  # "" is SOT + EOT
    # id 0 is the real token "!" in open_clip's vocabulary: a mask from ids != 0 would be wrong
    assert torch.equal(enc.mask[0], torch.arange(77) <= eot[0])


def test_image_embedding_is_raw_and_takes_pil_or_tensor(clip):
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    images = tensor_to_pil(x)
    from_tensor = clip.encode_image(pil_to_tensor(images))
    from_pil = clip.encode_image(images)
    assert from_tensor.shape == (2, 32)
    assert torch.allclose(from_tensor, from_pil, atol=1e-5)
    assert not torch.allclose(from_tensor.norm(dim=-1), torch.ones(2))  # unnormalised


def test_frozen(clip):
    assert not any(p.requires_grad for p in clip.parameters())
    clip.train()
    assert not clip.model.training


def test_missing_local_weights_fail_fast_without_download(tmp_path):
    cfg = ClipConfig(name="ViT-L-14-quickgelu", pretrained=str(tmp_path / "missing.bin"))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_clip(cfg)


def test_open_clip_weights_file_and_component_folder_load(clip, tmp_path):
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(path))
    loaded = load_clip(ClipConfig(pretrained=str(path)))
    prompts = ["a small blue star in the center on a black background"]
    assert torch.allclose(loaded.encode_text(prompts).emb, clip.encode_text(prompts).emb, atol=1e-6)
    save_component(clip, tmp_path / "clip")
    again = load_component(tmp_path / "clip")
    assert torch.allclose(again.encode_text(prompts).tokens, clip.encode_text(prompts).tokens, atol=1e-6)
    assert load_clip(ClipConfig(pretrained=str(tmp_path / "clip"))).embed_dim == 32


def test_openai_torchscript_files_load_and_other_architectures_are_named(tmp_path):
    """OpenAI's own ViT-L-14.pt is a TorchScript archive, which open_clip's checkpoint loader
    refuses; its state dict is read instead. A file of another architecture is a ValueError."""
    from dataclasses import replace

    from conftest import TINY_CONFIGS

    from unclip.config import load_stage_config

    cfg = load_stage_config(TINY_CONFIGS / "clip.yaml").clip
    torch.manual_seed(0)
    original = ClipEncoder(cfg)
    torch.jit.save(torch.jit.script(original.model), str(tmp_path / "ViT-tiny.pt"))
    loaded = load_clip(replace(cfg, pretrained=str(tmp_path / "ViT-tiny.pt")))
    a, b = original.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="not an open_clip checkpoint of this CLIP architecture: .*size mismatch"):
        load_clip(replace(cfg, text_width=64, pretrained=str(tmp_path / "ViT-tiny.pt")))
