"""The autoregressive prior network (paper §2.2): caption → CLIP image embedding, one code at a time.

z_i is reduced to its leading principal components (those holding ``pca_variance`` of the
training set's variance; the paper keeps 319 of 1,024 dimensions), each coordinate quantised into
``buckets`` uniform levels, and the codes predicted in order of decreasing variance by a causal
transformer whose sequence is

    [caption token states (L), text embedding, ⟨z_i, z_t⟩ token, code_1, …, code_K]

The ⟨z_i, z_t⟩ token is the quantised dot product of the image and text embeddings. The
transformer also predicts it, from the caption alone (at the text embedding's position), and at
sampling a high one is asked for: one drawn from the top ``dot_top`` of that predicted
distribution, so that samples fit their caption better. (The paper samples "from the top half of
the distribution" without saying whether of the caption's; a caption-independent histogram asks
many captions for a dot product they never reach.) With the text dropped (classifier-free
guidance) the token is a null index.

The PCA basis and the quantisation ranges are set once from training data (``set_stats``),
stored as buffers with the weights and never trained.

The buckets are ordered levels, but one free embedding per bucket (the default) treats them as
unrelated classes: a bucket that no training target fell in is never learned, so a caption whose
codes fall between those of the captions seen (a new colour–shape pair) cannot be answered.
``bucket_features: N`` makes every bucket table (the inputs of codes and of the ⟨z_i, z_t⟩ token,
and the output head) a learned projection of N sine/cosine pairs of the bucket's position
(``BucketTable``): neighbouring buckets share their weights, and the logits are a smooth
(band-limited) function of the level. ``bucket_mixture: M`` goes further for the output: the
head predicts a mixture of M logistic distributions over the level, each bucket getting the mass
that falls in it (``LogisticMixtureHead``), so the network answers with a location and a spread.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unclip.config import PriorConfig

PCA_MARGIN = 0.05  # the quantisation range of a coordinate: its training range widened by this share


class ARPrior(nn.Module):
    config_class = PriorConfig
    _no_split_modules = ["TransformerEncoderLayer"]  # FSDP units (unclip.training.sharded)

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        d, width, v = cfg.embedding_dim, cfg.num_attention_heads * cfg.attention_head_dim, cfg.buckets
        self.register_buffer("mean", torch.zeros(d))  # of the raw z_i
        self.register_buffer("components", torch.eye(d))  # principal directions (rows), by variance
        self.register_buffer("kept", torch.tensor(d))  # how many of them the sequence holds
        self.register_buffer("low", torch.full((d,), -1.0))  # quantisation range of each coordinate
        self.register_buffer("high", torch.full((d,), 1.0))
        self.register_buffer("dot_range", torch.tensor([-1.0, 1.0]))
        self.text_in = nn.Linear(d, width)
        self.text_emb_in = nn.Linear(d, width)
        self.dot_embed = bucket_table(v, width, cfg.bucket_features, extra=1)  # index v: no caption (dropped text)
        self.code_embed = bucket_table(v, width, cfg.bucket_features)
        self.position = nn.Parameter(torch.randn(cfg.num_embeddings + 2 + d, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, cfg.num_attention_heads, 4 * width, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        if cfg.bucket_mixture:
            self.head = LogisticMixtureHead(width, cfg.bucket_mixture, v)
        elif cfg.bucket_features:
            self.head = BucketTable(v, width, cfg.bucket_features)
        else:
            self.head = nn.Linear(width, v)

    @property
    def null_dot(self) -> int:
        return self.cfg.buckets

    @property
    def length(self) -> int:
        """K: the number of codes in a sample (the sampling loop's steps)."""
        return int(self.kept)

    # ------------------------------------------------------------------------------------------
    # statistics, codes and embeddings

    @torch.no_grad()
    def set_stats(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
        """PCA basis, kept count and quantisation ranges (codes and dot product) from raw training
        embeddings (N, D) of images and their captions."""
        z = image_emb.float()
        mean = z.mean(0)
        _, s, vh = torch.linalg.svd(z - mean, full_matrices=False)
        share = (s**2).cumsum(0) / (s**2).sum()
        kept = int((share < self.cfg.pca_variance).sum()) + 1
        self.mean.copy_(mean)
        self.components.zero_()[: len(vh)] = vh
        self.kept.fill_(min(kept, len(vh)))
        coords = (z - mean) @ vh.T
        self.low[: len(vh)], self.high[: len(vh)] = _widened(coords.min(0).values, coords.max(0).values)
        dot = (z * text_emb.float()).sum(-1)
        self.dot_range.copy_(torch.stack(_widened(dot.min(), dot.max())))

    def _levels(self, x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        unit = (x.float() - low) / (high - low)
        return (unit * self.cfg.buckets).floor().long().clamp(0, self.cfg.buckets - 1)

    def quantise(self, image_emb: torch.Tensor) -> torch.Tensor:
        """Raw z_i (B, D) → codes (B, K), each in [0, buckets)."""
        k = self.length
        coords = (image_emb.float() - self.mean) @ self.components[:k].T
        return self._levels(coords, self.low[:k], self.high[:k])

    def dequantise(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, K) → raw z_i (B, D): each bucket's centre, mapped back from PCA space."""
        k = codes.shape[1]
        low, high = self.low[:k], self.high[:k]
        coords = low + (codes.float() + 0.5) / self.cfg.buckets * (high - low)
        return self.mean + coords @ self.components[:k]

    def dot_bucket(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """The ⟨z_i, z_t⟩ token (B,) of image and text embeddings (B, D)."""
        dot = (image_emb.float() * text_emb.float()).sum(-1)
        return self._levels(dot, self.dot_range[0], self.dot_range[1])

    def top_dot(self, logits: torch.Tensor) -> torch.Tensor:
        """The top ``dot_top`` share of the predicted ⟨z_i, z_t⟩ distributions ``logits`` (B,
        buckets), as unnormalised weights (B, buckets): the buckets with less than that share of
        the probability above them keep theirs, the others get 0."""
        p = torch.softmax(logits.float(), dim=-1)
        above = p.flip(-1).cumsum(-1).flip(-1) - p  # probability of the buckets above each
        return torch.where(above < self.cfg.dot_top, p, torch.zeros_like(p))

    # ------------------------------------------------------------------------------------------
    # the transformer

    def forward(self, codes: torch.Tensor, *, dot: torch.Tensor, text_emb: torch.Tensor,
                text_tokens: torch.Tensor, text_mask: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, k + 2, buckets): of the ⟨z_i, z_t⟩ token (from the caption alone), then of
        codes 1 … k + 1, given the first k codes (B, k) (k may be 0), the ⟨z_i, z_t⟩ tokens (B,),
        text_emb (B, D), text_tokens (B, L, D) and text_mask (B, L). With ``targets`` (B, k + 2)
        and a ``LogisticMixtureHead``: only the targets' log-probabilities (B, k + 2), which is what
        training needs."""
        out = self.hidden(codes, dot=dot, text_emb=text_emb, text_tokens=text_tokens, text_mask=text_mask)
        if targets is not None and isinstance(self.head, LogisticMixtureHead):
            return self.head.log_prob(out, targets)
        return self.logits(out)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head on states (…, width) from ``hidden``: logits (…, buckets)."""
        return hidden @ self.head.weight.T if isinstance(self.head, BucketTable) else self.head(hidden)

    def hidden(self, codes: torch.Tensor, *, dot: torch.Tensor, text_emb: torch.Tensor,
               text_tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The states (B, k + 2, width) the head reads (``forward``'s arguments)."""
        prefix = torch.cat([self.text_in(text_tokens), self.text_emb_in(text_emb)[:, None],
                            self.dot_embed(dot)[:, None]], dim=1)
        x = torch.cat([prefix, self.code_embed(codes)], dim=1)
        n = x.shape[1]
        x = x + self.position[:n]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        pad = torch.cat([~text_mask.bool(), text_mask.new_zeros(len(x), n - text_mask.shape[1], dtype=torch.bool)], 1)
        x = self.blocks(x, mask=causal, src_key_padding_mask=pad, is_causal=True)
        return self.norm(x[:, prefix.shape[1] - 2:])


class LogisticMixtureHead(nn.Module):
    """Log-probabilities (…, buckets) of ``buckets`` ordered levels on [0, 1] under a mixture of
    ``components`` logistic distributions whose weights, locations and scales are linear in the
    input (…, width): bucket j gets each component's mass between j / buckets and (j + 1) /
    buckets, the first and last buckets also the tails, so the buckets' probabilities sum to 1."""

    def __init__(self, width: int, components: int, buckets: int):
        super().__init__()
        self.components, self.buckets = components, buckets
        self.out = nn.Linear(width, 3 * components)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():  # start: locations spread over the range, scales a tenth of it
            self.out.bias.zero_()
            self.out.bias[components:2 * components] = (torch.arange(components) + 0.5) / components
            self.out.bias[2 * components:] = math.log(0.1)
        edges = torch.arange(buckets + 1) / buckets
        edges[0], edges[-1] = -1e4, 1e4  # open tails (finite, so that no gradient meets inf − inf)
        self.register_buffer("edges", edges, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x, None)

    def log_prob(self, x: torch.Tensor, buckets: torch.Tensor | None) -> torch.Tensor:
        """log P(bucket) (…) of the given ``buckets`` (…, long), or of every bucket (…, buckets) for
        None: training needs only the targets' (B·K·M values instead of B·K·M·buckets)."""
        weight, loc, log_scale = self.out(x).float().chunk(3, dim=-1)  # (…, M) each
        inv_scale = torch.exp(-log_scale.clamp(min=math.log(1e-4)))
        if buckets is None:
            upper, lower, loc, inv_scale = self.edges[1:], self.edges[:-1], loc[..., None], inv_scale[..., None]
        else:
            upper, lower = self.edges[buckets + 1][..., None], self.edges[buckets][..., None]
        log_mass = log_sigmoid_difference((upper - loc) * inv_scale, (lower - loc) * inv_scale)
        log_weight = torch.log_softmax(weight, dim=-1)
        if buckets is None:  # (…, M, buckets)
            return torch.logsumexp(log_weight[..., None] + log_mass, dim=-2)
        return torch.logsumexp(log_weight + log_mass, dim=-1)


def log_sigmoid_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(σ(a) − σ(b)) for a > b, computed where it does not cancel: σ(a) − σ(b) = σ(−b) − σ(−a)
    is used when both lie in the upper tail."""
    upper_tail = (a + b) > 0
    a, b = torch.where(upper_tail, -b, a), torch.where(upper_tail, -a, b)
    log_a, log_b = F.logsigmoid(a), F.logsigmoid(b)
    return log_a + torch.log(-torch.expm1((log_b - log_a).clamp(max=-1e-6)))


class BucketTable(nn.Module):
    """Vectors (width) of ``buckets`` ordered levels, as a learned linear map of fixed features of
    each level's position p ∈ (0, 1): sin(kπp), cos(kπp) for k = 1 … ``features``. Indices past the
    levels (``extra``, e.g. the dropped caption's dot token) get free vectors. Used as an embedding
    (``table(index)``) or, through ``weight`` (buckets, width), as an output head."""

    def __init__(self, buckets: int, width: int, features: int, extra: int = 0):
        super().__init__()
        position = (torch.arange(buckets) + 0.5) / buckets
        angle = position[:, None] * torch.arange(1, features + 1) * math.pi
        self.register_buffer("basis", torch.cat([angle.sin(), angle.cos()], dim=1), persistent=False)
        self.project = nn.Linear(2 * features, width, bias=False)
        nn.init.normal_(self.project.weight, std=1 / (2 * features))  # rows of std ≈ 1 / √(4·features)
        self.extra = nn.Parameter(torch.randn(extra, width) * 0.02)

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.project(self.basis.to(self.project.weight.dtype)), self.extra])

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return F.embedding(index, self.weight)


def bucket_table(levels: int, width: int, features: int, extra: int = 0) -> nn.Module:
    """An embedding of ``levels`` ordered levels plus ``extra`` other indices: free vectors
    (``features`` 0) or a ``BucketTable``."""
    if not features:
        return nn.Embedding(levels + extra, width)
    return BucketTable(levels, width, features, extra)


def _widened(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    margin = (high - low).clamp(min=1e-6) * PCA_MARGIN
    return low - margin, high + margin
