"""The autoregressive prior (paper §2.2): PCA codes, the ⟨z_i, z_t⟩ token, the causal transformer,
its training loss and stage, sampling with guidance, and its place in pipeline folders, the CLI
and ``unclip eval``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from unclip.checkpoint import load_component, save_component
from unclip.cli import main
from unclip.config import PriorConfig, PriorKind, load_stage_config
from unclip.networks.prior_ar import ARPrior
from unclip.pipeline.cascade import UnCLIPPipeline
from unclip.pipeline.folder import prior_folders, random_parts
from unclip.pipeline.karlo import to_diffusers
from unclip.pipeline.prior_ar import draw, sample_ar_prior
from unclip.training.losses import ar_prior_loss

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"
D = 32


def tiny_cfg(**changes) -> PriorConfig:
    return replace(load_stage_config(TINY / "prior_ar.yaml").prior, **changes)


def low_rank_embeddings(n: int = 400, rank: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image embeddings of rank ``rank`` (plus a trace of noise) and text embeddings near them."""
    basis = torch.randn(rank, D, generator=torch.Generator().manual_seed(123))  # one distribution
    g = torch.Generator().manual_seed(seed)
    z = 3 + torch.randn(n, rank, generator=g) @ basis + 1e-3 * torch.randn(n, D, generator=g)
    return z, z + 0.5 * torch.randn(n, D, generator=g)


def fitted(seed: int = 0, **changes) -> ARPrior:
    torch.manual_seed(seed)
    prior = ARPrior(tiny_cfg(**changes))
    prior.set_stats(*low_rank_embeddings())
    return prior.eval()


def text_encoding(prior: ARPrior, batch: int, seed: int = 0, length: int = 77):
    from unclip.networks.clip import TextEncoding

    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, :5] = True
    return TextEncoding(torch.randn(batch, length, D, generator=g), mask, torch.randn(batch, D, generator=g))


# ----------------------------------------------------------------------------------------------
# codes


def test_pca_keeps_the_components_that_hold_the_variance_and_codes_round_trip():
    prior = fitted(buckets=1024)
    z, _ = low_rank_embeddings(seed=1)  # other samples of the same distribution
    assert prior.length == 4  # rank 4: four components hold > 99% of the variance
    codes = prior.quantise(z)
    assert codes.shape == (len(z), 4) and codes.min() >= 0 and codes.max() < 1024
    error = lambda x: (prior.dequantise(prior.quantise(x)) - x).norm(dim=1) / x.norm(dim=1)  # noqa: E731
    train, _ = low_rank_embeddings()
    assert error(train).max() < 0.01  # half a bucket of a 1,024-level range, and the discarded noise
    assert (error(z) < 0.01).float().mean() > 0.95  # new samples: the same but for those outside the range


def test_fewer_buckets_and_a_lower_variance_share_lose_more():
    z, _ = low_rank_embeddings(seed=1)
    fine, coarse = fitted(buckets=1024), fitted(buckets=8)
    err = lambda p: ((p.dequantise(p.quantise(z)) - z).norm(dim=1) / z.norm(dim=1)).mean()  # noqa: E731
    assert err(coarse) > 5 * err(fine)
    assert fitted(pca_variance=0.5).length < 4


def test_the_dot_token_is_drawn_from_the_top_half_of_the_predicted_distribution():
    prior = fitted()
    g = torch.Generator().manual_seed(0)
    flat = torch.full((2000, 64), -1e4)
    flat[:, 10:30] = 0.0  # uniform over buckets 10-29
    drawn = draw(prior.top_dot(flat), g)[:, 0]
    assert drawn.min() >= 20 and drawn.max() <= 29 and len(drawn.unique()) == 10  # the top half, all of it
    peaked = flat.clone()
    peaked[:, 12] = 10.0  # one bucket holds nearly everything: it is the top half
    assert (draw(prior.top_dot(peaked), g) == 12).all()
    prior.cfg = replace(prior.cfg, dot_top=1.0)
    assert draw(prior.top_dot(flat), g).min() < 20  # the whole distribution


# ----------------------------------------------------------------------------------------------
# the transformer


def test_each_code_sees_only_the_caption_and_the_codes_before_it():
    prior = fitted()
    text = text_encoding(prior, 2)
    codes = torch.randint(0, 64, (2, 3))
    dot = torch.tensor([5, 7])
    out = prior(codes, dot=dot, text_emb=text.emb, text_tokens=text.tokens, text_mask=text.mask)
    assert out.shape == (2, 5, 64)  # the dot token, then codes 1-4
    later = codes.clone()
    later[:, 2] = (later[:, 2] + 1) % 64
    changed = prior(later, dot=dot, text_emb=text.emb, text_tokens=text.tokens, text_mask=text.mask)
    torch.testing.assert_close(changed[:, :4], out[:, :4])  # logits of codes 1-3 do not see code 3
    assert not torch.allclose(changed[:, 4], out[:, 4])
    padded = text.tokens.clone()
    padded[:, 10:] += 5  # past the mask
    same = prior(codes, dot=dot, text_emb=text.emb, text_tokens=padded, text_mask=text.mask)
    torch.testing.assert_close(same, out)
    other_dot = prior(codes, dot=dot + 1, text_emb=text.emb, text_tokens=text.tokens, text_mask=text.mask)
    torch.testing.assert_close(other_dot[:, 0], out[:, 0])  # the dot token's own logits: from the caption alone
    assert not torch.allclose(other_dot[:, 1:], out[:, 1:])
    other_text = prior(codes, dot=dot, text_emb=text.emb + 1, text_tokens=text.tokens, text_mask=text.mask)
    assert not torch.allclose(other_text[:, 0], out[:, 0])


def _train_briefly(prior: ARPrior, steps: int = 60):
    """``steps`` AdamW steps on 16 low-rank embeddings and their captions: (loss before, the last step's
    loss dict, (z, t, text, empty))."""
    z, t = low_rank_embeddings(n=16)
    text = text_encoding(prior, 16)
    text.emb = t
    empty = text_encoding(prior, 1, seed=9)
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    first = ar_prior_loss(prior, image_emb=z, text=text, empty=empty)["loss"].item()
    for _ in range(steps):
        out = ar_prior_loss(prior, image_emb=z, text=text, empty=empty, generator=torch.Generator().manual_seed(1))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return first, out, (z, t, text, empty)


def test_the_loss_learns_codes_and_drops_the_caption_with_the_dot_token():
    prior = fitted().train()
    first, out, (z, t, text, empty) = _train_briefly(prior)
    assert first > 3.5  # about ln 64 at the start
    assert out["loss"].item() < first / 2 and out["code_accuracy"] > 0.3

    seen = {}
    real = prior.forward
    prior.forward = lambda codes, **kw: seen.update(kw) or real(codes, **kw)
    prior.cfg = replace(prior.cfg, text_drop=1.0)
    ar_prior_loss(prior, image_emb=z, text=text, empty=empty)
    assert (seen["dot"] == prior.null_dot).all()
    torch.testing.assert_close(seen["text_emb"], empty.emb.expand(16, -1))
    prior.forward = real

    def dot_only_loss(p):  # the cross-entropy of the dot token alone, codes made free
        logits = real(torch.zeros(16, 0, dtype=torch.long), dot=p.dot_bucket(z, t), text_emb=t,
                      text_tokens=text.tokens, text_mask=text.mask)
        return torch.nn.functional.cross_entropy(logits[:, 0], p.dot_bucket(z, t))

    prior.cfg = replace(prior.cfg, text_drop=0.0)
    assert dot_only_loss(prior) < 2.0  # the loss above taught the dot token from the caption too


# ----------------------------------------------------------------------------------------------
# sampling


def test_guidance_zero_samples_without_the_caption_and_one_with_it():
    prior = fitted()
    with torch.no_grad():
        prior.head.weight.mul_(100)  # sharp logits, so that the caption changes what is drawn
    a, b = text_encoding(prior, 3, seed=1), text_encoding(prior, 3, seed=2)
    empty = text_encoding(prior, 1, seed=9)

    def draw(text, guidance):
        return sample_ar_prior(prior, text, empty, guidance, torch.Generator().manual_seed(0))

    torch.testing.assert_close(draw(a, 0.0), draw(b, 0.0))  # u + 0·(c − u): the caption is gone
    assert not torch.allclose(draw(a, 1.0), draw(b, 1.0))
    z = draw(a, 3.0)
    assert z.shape == (3, D) and torch.isfinite(z).all()
    rows = sample_ar_prior(prior, a, empty, 3.0, [torch.Generator().manual_seed(s) for s in (4, 5, 6)])
    alone = sample_ar_prior(prior, a[1:2], empty, 3.0, [torch.Generator().manual_seed(5)])
    torch.testing.assert_close(rows[1:2], alone)  # one generator per row: a row does not depend on the others


def test_a_saved_ar_prior_loads_as_one_and_samples_the_same(tmp_path):
    prior = fitted()
    save_component(prior, tmp_path / "prior_ar", dtype=torch.float16)
    loaded = load_component(tmp_path / "prior_ar")
    assert isinstance(loaded, ARPrior) and loaded.cfg.kind is PriorKind.autoregressive
    assert json.loads((tmp_path / "prior_ar" / "config.json").read_text())["component"] == "prior"
    for name in ("mean", "components", "low", "high", "dot_range", "kept"):
        torch.testing.assert_close(getattr(loaded, name), getattr(prior, name))  # statistics kept exactly
    assert loaded.length == prior.length


# ----------------------------------------------------------------------------------------------
# pipelines, CLI, training and evaluation


@pytest.fixture(scope="module")
def folder_with_two_priors(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two_priors")
    pipe = UnCLIPPipeline.from_configs(TINY, seed=0)
    pipe.save_pretrained(root)
    ar = random_parts(TINY, prior="prior_ar").prior
    ar.set_stats(torch.randn(200, D), torch.randn(200, D))
    save_component(ar, root / "prior_ar", extra={"diffusion": {"guidance_scale": 2.0}})
    return root


def test_a_pipeline_folder_chooses_its_prior_by_sub_folder(folder_with_two_priors):
    root = folder_with_two_priors
    assert prior_folders(root) == ["prior", "prior_ar"]
    diffusion = UnCLIPPipeline.from_pretrained(root)
    ar = UnCLIPPipeline.from_pretrained(root, prior="prior_ar")
    assert not isinstance(diffusion.prior, ARPrior) and isinstance(ar.prior, ARPrior)
    assert ar.sampling["prior"].diffusion.guidance_scale == 2.0  # from prior_ar/config.json
    images = ar.generate("a red circle", n=2, steps=1, seed=0, progress=False)
    assert len(images) == 2 and images[0].size == (128, 128)
    with pytest.raises(ValueError, match="no prior in a sub-folder 'decoder'.*priors here: prior, prior_ar"):
        UnCLIPPipeline.from_pretrained(root, prior="decoder")
    with pytest.raises(ValueError, match="no autoregressive prior"):
        to_diffusers(ar)


def test_the_cli_takes_prior(folder_with_two_priors, tmp_path, capsys):
    args = ["--steps", "1", "--quiet", "--seed", "0", "--size", "32"]
    assert main(["generate", "a red circle", "--checkpoint", str(folder_with_two_priors), "--prior", "prior_ar",
                 "--out", str(tmp_path), *args]) == 0
    assert (tmp_path / "a-red-circle-0.png").is_file()
    assert main(["generate", "a red circle", "--random-from", str(TINY), "--prior", "prior_ar",
                 "--out", str(tmp_path / "r"), *args]) == 0
    assert main(["generate", "x", "--checkpoint", str(folder_with_two_priors), "--prior", "nope",
                 "--out", str(tmp_path), *args]) == 2
    assert "no prior in a sub-folder 'nope'" in capsys.readouterr().err


def test_unclip_train_prior_trains_and_exports_the_ar_prior(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "prior", "--config", str(TINY / "prior_ar.yaml"), "--output", str(out)]) == 0
    exported = load_component(out / "export" / "prior")
    assert isinstance(exported, ARPrior)
    assert exported.length < D and exported.dot_range[1] > exported.dot_range[0]  # statistics set from data
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any("code_accuracy" in r for r in logs) and any("prior/cos_pred" in r for r in logs)
    meta = json.loads((out / "export" / "prior" / "config.json").read_text())
    assert meta["config"]["kind"] == "autoregressive" and meta["diffusion"]["guidance_scale"] == 2.0


def test_eval_puts_the_priors_side_by_side(folder_with_two_priors):
    from unclip.evaluation.priors import compare_priors
    from unclip.evaluation.report import EvalSettings, _priors_table

    settings = EvalSettings(prompts=2, prior_captions=2, batch=2, steps={"prior": 1, "decoder": 1})
    pipes = {name: UnCLIPPipeline.from_pretrained(folder_with_two_priors, prior=name) for name in ("prior", "prior_ar")}
    result = compare_priors(pipes, settings)
    assert [result[n]["kind"] for n in ("prior", "prior_ar")] == ["diffusion", "autoregressive"]
    for r in result.values():
        assert r["binding"]["two_object"]["n"] == 2 and r["seconds_per_image"] > 0
        assert -1 <= r["cosine"]["prior_best_of_2"] <= 1
    table = "\n".join(_priors_table(result, lambda v: f"{100 * v:.1f}%"))
    assert "| prior_ar | autoregressive |" in table and "| prior | diffusion |" in table
    # the report's own binding (all prompts, the loaded prior) is taken as it is, not measured again
    known = {"two_object": {"all": 0.123, "n": 2}}
    reused = compare_priors(pipes, settings, measured=(pipes["prior"], known))
    assert reused["prior"]["binding"] is known and reused["prior_ar"]["binding"] == result["prior_ar"]["binding"]
    fewer = replace(settings, ablation_prompts=1)  # a shorter comparison measures its own
    assert compare_priors(pipes, fewer, measured=(pipes["prior"], known))["prior"]["binding"]["two_object"]["n"] == 1



def test_smoothed_targets_spread_over_neighbours_and_a_near_miss_costs_less():
    from unclip.training.losses import smoothed

    q = smoothed(torch.tensor([10, 0]), 64, 2.0)
    torch.testing.assert_close(q.sum(-1), torch.ones(2))
    assert q[0].argmax() == 10 and q[0, 8] == pytest.approx(q[0, 12]) and q[0, 8] > q[0, 6] > q[0, 30]
    assert q[1, 0] > q[1, 1]  # cut at the end
    near, far = torch.full((1, 64), -5.0), torch.full((1, 64), -5.0)
    near[0, 12], far[0, 40] = 5.0, 5.0  # both miss bucket 10
    ce = lambda logits: torch.nn.functional.cross_entropy(logits, smoothed(torch.tensor([10]), 64, 2.0))  # noqa: E731
    assert ce(near) < ce(far)

    prior = fitted(bucket_sigma=2.0)
    z, t = low_rank_embeddings(n=8)
    text = text_encoding(prior, 8)
    text.emb = t
    out = ar_prior_loss(prior, image_emb=z, text=text, empty=text_encoding(prior, 1, seed=9))
    assert torch.isfinite(out["loss"]) and out["loss"] > 0


@pytest.mark.parametrize("pairs", ["seen", "held_out"])
def test_the_shipped_ar_prior_samples_captions_close_to_their_renders(pairs):
    """checkpoints/shapes/prior_ar: on one-object captions, seen colour–shape pairs and held-out ones
    (never rendered in training), its samples are near the true z_i and far from another caption's
    (measured, seed 0: seen 0.98 against 0.00, held out 0.88 against 0.08; the one-hot AR prior
    shipped before gave 0.05 on held-out pairs)."""
    from unclip.config import Stage
    from unclip.data.shapes import HELD_OUT_PAIRS, PAIR_POOLS
    from unclip.evaluation.report import one_object_scenes
    from unclip.pipeline.plan import SamplingOptions
    from unclip.pipeline.sampling import sample_prior

    pipe = UnCLIPPipeline.from_pretrained(ROOT / "checkpoints" / "shapes", prior="prior_ar")
    assert isinstance(pipe.prior, ARPrior) and pipe.prior.length == 24
    pool = list(PAIR_POOLS["train"]) if pairs == "seen" else sorted(HELD_OUT_PAIRS)
    scenes = one_object_scenes(pool, 16, 123)
    true = pipe.clip.encode_image([s.render(64) for s in scenes])
    text = pipe.clip.encode_text([s.caption for s in scenes])
    run = pipe.plan([Stage.prior], SamplingOptions())[Stage.prior]
    z = sample_prior(pipe, text, run, torch.Generator().manual_seed(0), progress=False)
    own = torch.nn.functional.cosine_similarity(z, true).mean()
    other = torch.nn.functional.cosine_similarity(z, true.roll(1, 0)).mean()
    assert own > 0.75 and own > other + 0.3


# ----------------------------------------------------------------------------------------------
# ordered bucket tables (prior.bucket_features)


def _one_step_on_bucket(prior: ARPrior, target: int) -> torch.Tensor:
    """Head logits of one fixed input before and after an SGD step towards bucket ``target``: (2, buckets)."""
    h = torch.randn(1, prior.head.weight.shape[1], generator=torch.Generator().manual_seed(0))

    def logits():
        return h @ prior.head.weight.T

    before = logits().detach()
    torch.nn.functional.cross_entropy(logits(), torch.tensor([target])).backward()
    with torch.no_grad():
        for p in (p for p in prior.head.parameters() if p.grad is not None):  # a free head's bias is unused
            p -= 0.5 * p.grad
    return torch.cat([before, logits().detach()])


def test_bucket_features_let_a_target_teach_its_neighbours_and_free_buckets_do_not():
    target = 30  # of the tiny config's 64 buckets
    free = _one_step_on_bucket(fitted(bucket_features=0), target)
    ordered = _one_step_on_bucket(fitted(bucket_features=8), target)
    gain_free, gain_ordered = free[1] - free[0], ordered[1] - ordered[0]
    assert gain_free[target] > 0 and gain_ordered[target] > 0
    neighbours = [target - 2, target - 1, target + 1, target + 2]
    assert (gain_free[neighbours] < 0).all()  # unrelated classes: pushed down like every other bucket
    assert (gain_ordered[neighbours] > 0).all()  # ordered levels: the neighbours learn too
    far = gain_ordered[(torch.arange(len(gain_ordered)) - target).abs() > 16]
    assert gain_ordered[neighbours].min() > far.abs().max()  # ... and more than distant buckets move


def test_a_prior_with_bucket_features_saves_loads_and_samples_the_same(tmp_path):
    prior = fitted(bucket_features=8)
    width = prior.cfg.num_attention_heads * prior.cfg.attention_head_dim
    assert prior.code_embed.weight.shape == (prior.cfg.buckets, width)
    assert prior.dot_embed.weight.shape[0] == prior.cfg.buckets + 1  # plus the dropped caption's token
    adjacent = torch.nn.functional.cosine_similarity(prior.code_embed.weight[:-1], prior.code_embed.weight[1:])
    assert adjacent.mean() > 0.9  # neighbouring levels embed alike
    save_component(prior, tmp_path / "prior_ar", dtype=torch.float16)
    loaded = load_component(tmp_path / "prior_ar").float()
    assert loaded.cfg.bucket_features == 8
    text, empty = text_encoding(prior, 3), text_encoding(prior, 1, seed=9)
    for p in prior.parameters():  # the fp16 export rounds the weights (and keeps the statistics exact)
        p.data = p.data.half().float()
    z = sample_ar_prior(prior, text, empty, 2.0, torch.Generator().manual_seed(1), progress=False)
    z_loaded = sample_ar_prior(loaded, text, empty, 2.0, torch.Generator().manual_seed(1), progress=False)
    torch.testing.assert_close(z_loaded, z)


# ----------------------------------------------------------------------------------------------
# the discretised logistic mixture head (prior.bucket_mixture)


def test_log_sigmoid_difference_is_exact_in_both_tails():
    import math

    from unclip.networks.prior_ar import log_sigmoid_difference

    def tail(far: float, near: float) -> float:  # log(e^far − e^near), far > near: both σ in a tail
        return far + math.log(1 - math.exp(near - far))

    def direct(a: float, b: float) -> float:  # float64 is exact enough away from the tails
        return math.log(1 / (1 + math.exp(-a)) - 1 / (1 + math.exp(-b)))

    a = torch.tensor([40.0, 30.0, 5.0, -3.0, -35.0])
    b = torch.tensor([39.0, 29.5, 4.0, -40.0, -36.0])
    # upper tail: σ(a) − σ(b) = σ(−b) − σ(−a) ≈ e^−b − e^−a; lower tail: ≈ e^a − e^b
    exact = torch.tensor([tail(-39.0, -40.0), tail(-29.5, -30.0), direct(5.0, 4.0), direct(-3.0, -40.0),
                          tail(-35.0, -36.0)])
    torch.testing.assert_close(log_sigmoid_difference(a, b), exact, atol=1e-4, rtol=1e-5)
    assert torch.isinf(torch.log(torch.sigmoid(a[:1]) - torch.sigmoid(b[:1]))).all()  # the naive form fails


def test_the_mixture_head_is_a_distribution_and_scores_targets_alone_the_same():
    prior = fitted(bucket_mixture=3, bucket_features=8)
    text = text_encoding(prior, 4)
    codes = torch.randint(0, prior.cfg.buckets, (4, prior.length))
    dot = torch.randint(0, prior.cfg.buckets, (4,))
    args = dict(dot=dot, text_emb=text.emb, text_tokens=text.tokens, text_mask=text.mask)
    full = prior(codes[:, :-1], **args)  # log-probabilities of every bucket
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(4, prior.length + 1))
    targets = torch.cat([dot[:, None], codes], 1)
    scored = prior(codes[:, :-1], **args, targets=targets)
    torch.testing.assert_close(scored, full.gather(-1, targets[..., None])[..., 0])


def test_the_mixture_prior_learns_codes_and_teaches_neighbouring_buckets():
    prior = fitted(bucket_mixture=2, bucket_features=8).train()
    first, out, (z, t, text, empty) = _train_briefly(prior)
    assert first > 3.0 and out["loss"].item() < first / 2
    prior.eval()
    codes = prior.quantise(z)
    args = dict(dot=prior.dot_bucket(z, t), text_emb=t, text_tokens=text.tokens, text_mask=text.mask)
    p = prior(codes[:, :-1], **args)[:, 1:].exp()  # (B, K, buckets)
    near = torch.stack([p.gather(-1, (codes + d).clamp(0, prior.cfg.buckets - 1)[..., None])[..., 0]
                        for d in (-1, 1)]).mean(0)
    far = p.gather(-1, ((codes + prior.cfg.buckets // 2) % prior.cfg.buckets)[..., None])[..., 0]
    assert (near > far).float().mean() > 0.9  # mass sits around the code, not on unrelated buckets


def test_a_mixture_prior_saves_loads_and_samples_the_same(tmp_path):
    prior = fitted(bucket_mixture=3, bucket_features=8)
    save_component(prior, tmp_path / "prior_ar", dtype=torch.float16)
    loaded = load_component(tmp_path / "prior_ar").float()
    assert loaded.cfg.bucket_mixture == 3
    for p in prior.parameters():
        p.data = p.data.half().float()
    text, empty = text_encoding(prior, 3), text_encoding(prior, 1, seed=9)
    z = sample_ar_prior(prior, text, empty, 2.0, torch.Generator().manual_seed(1), progress=False)
    torch.testing.assert_close(sample_ar_prior(loaded, text, empty, 2.0, torch.Generator().manual_seed(1)), z)
