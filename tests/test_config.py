"""Typed configs: YAML round trips, unknown keys rejected with key and file named, overrides."""

from pathlib import Path

import pytest
import yaml

from unclip.config import (
    ConfigError,
    DecoderStageConfig,
    Degradation,
    Precision,
    PriorKind,
    Stage,
    load_stage_config,
    save_yaml,
    to_dict,
)

CONFIGS = sorted(p for p in Path(__file__).parents[1].joinpath("configs").glob("*/*.yaml")
                 if p.parent.name != "accelerate")  # accelerate launch configs: tests/test_sharded.py


def test_every_scale_has_its_stage_files():
    scales = {p.parent.name for p in CONFIGS}
    assert scales == {"tiny", "shapes", "karlo", "paper", "emoji"}
    stems = {scale: {p.stem for p in CONFIGS if p.parent.name == scale} for scale in scales}
    full = {"clip", "prior", "prior_ar", "decoder", "upsampler_256", "upsampler_1024"}  # prior_ar: the AR prior
    assert stems["tiny"] == stems["shapes"] == stems["paper"] == full
    assert stems["karlo"] == full - {"upsampler_1024", "prior_ar"}  # Karlo has no 1024 stage and no AR prior
    # the emoji cascade (issue 21) has the diffusion prior only, and the from-scratch CLIP it measured
    # beside its LiT one
    assert stems["emoji"] == full - {"prior_ar"} | {"clip_scratch"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_yaml_dataclass_yaml_round_trip(path, tmp_path):
    cfg = load_stage_config(path)
    out = tmp_path / "again.yaml"
    save_yaml(cfg, out)
    again = load_stage_config(out)
    assert again == cfg
    assert to_dict(again) == yaml.safe_load(out.read_text())


def test_unknown_key_is_rejected_naming_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: decoder\ndecoder: {sample_size: 32, chanels: [8, 16]}\n")
    with pytest.raises(ConfigError) as err:
        load_stage_config(bad)
    assert "chanels" in str(err.value) and str(bad) in str(err.value)


def test_unknown_section_and_bad_stage(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: upsampler\nprior: {num_layers: 2}\n")
    with pytest.raises(ConfigError, match="'prior'"):
        load_stage_config(bad)
    bad.write_text("stage: painter\n")
    with pytest.raises(ConfigError, match="stage"):
        load_stage_config(bad)


def test_overrides_are_typed_like_file_keys():
    path = Path(__file__).parents[1] / "configs/tiny/decoder.yaml"
    cfg = load_stage_config(path, ["training.lr=0.5", "decoder.block_out_channels=[8, 16]",
                                   "training.mixed_precision=bf16", "training.steps=7"])
    assert isinstance(cfg, DecoderStageConfig)
    assert cfg.training.lr == 0.5 and cfg.training.steps == 7
    assert cfg.decoder.block_out_channels == (8, 16)
    assert cfg.training.mixed_precision is Precision.bf16
    with pytest.raises(ConfigError, match="training.steps"):
        load_stage_config(path, ["training.steps=many"])
    with pytest.raises(ConfigError, match="unknown key 'stpes'"):
        load_stage_config(path, ["training.stpes=3"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_stage_config(path, ["training.steps"])


def test_yaml_syntax_errors_name_the_override_or_the_file(tmp_path):
    path = Path(__file__).parents[1] / "configs/tiny/decoder.yaml"
    with pytest.raises(ConfigError, match=r"override 'data.path=\*.tar': not valid YAML .*quote a value"):
        load_stage_config(path, ["data.path=*.tar"])  # * starts a YAML alias
    broken = tmp_path / "broken.yaml"
    broken.write_text("stage: decoder\ntraining:\n  steps: 3\n lr: 0.1\n")
    with pytest.raises(ConfigError, match=f"{broken}: not valid YAML"):
        load_stage_config(broken)


def test_exponent_floats_without_a_dot_are_floats():
    """YAML 1.1 reads `3e-4` as a string; a float field takes it as 0.0003, a word stays an error."""
    path = Path(__file__).parents[1] / "configs/tiny/decoder.yaml"
    cfg = load_stage_config(path, ["training.lr=3e-4", "training.offset_noise=1e-1"])
    assert cfg.training.lr == pytest.approx(3e-4) and isinstance(cfg.training.lr, float)
    assert cfg.training.offset_noise == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="training.lr: expected float, got 'fast'"):
        load_stage_config(path, ["training.lr=fast"])


def test_enums_parse_from_values():
    cfg = load_stage_config(Path(__file__).parents[1] / "configs/tiny/upsampler_1024.yaml")
    assert cfg.upsampler.degradation is Degradation.bsr
    assert cfg.diffusion.beta_schedule.value == "linear"
    path = Path(__file__).parents[1] / "configs/tiny/upsampler_1024.yaml"
    assert load_stage_config(path, ["upsampler.degradation=null"]).upsampler.degradation is None  # clean conditioning
    with pytest.raises(ConfigError, match="upsampler.degradation"):
        load_stage_config(path, ["upsampler.degradation=jpeg"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_config_names_its_own_stage(path):
    """A stage file says which stage it configures; the file name is not read, but agrees
    (``prior_ar.yaml``: the prior stage, of the autoregressive kind; ``clip_scratch.yaml``: the CLIP
    stage, both towers trained)."""
    cfg = load_stage_config(path)
    assert isinstance(cfg.stage, Stage)
    if path.stem == "prior_ar":
        assert cfg.stage == "prior" and cfg.prior.kind is PriorKind.autoregressive
    elif path.stem == "clip_scratch":
        assert cfg.stage == "clip" and not cfg.clip.text_model
    else:
        assert cfg.stage == path.stem


@pytest.mark.parametrize("sizes, slot", [({"sample_size": 256, "low_res_size": 64}, "upsampler_256"),
                                         ({"sample_size": 1024, "low_res_size": 256}, "upsampler_1024"),
                                         ({"sample_size": 64, "low_res_size": 32}, "upsampler_256")])
def test_a_file_written_before_the_slots_had_names_gets_its_slot_from_its_sizes(tmp_path, sizes, slot):
    path = tmp_path / "old.yaml"
    path.write_text(f"stage: upsampler\nupsampler: {sizes}\n".replace("'", ""))
    assert load_stage_config(path).stage == slot


def test_the_stage_vocabulary():
    assert [str(s) for s in Stage] == ["clip", "prior", "decoder", "upsampler_256", "upsampler_1024"]
    assert {s.component for s in Stage} == {"clip", "prior", "decoder", "upsampler"}
    assert f"{Stage.upsampler_1024}" == "upsampler_1024"  # formats as its name in messages and paths
    assert {"prior": 1}[Stage.prior] == 1  # a plain-string key finds the member
