"""Sampling the autoregressive prior (paper §2.2): one PCA code of z_i per step, K steps.

Each step runs the transformer on the codes so far and draws the next from its softmax; with
guidance ≠ 1 the batch is ``[uncond; cond]`` (the empty caption and the null dot token first) and
the logits are mixed with ``diffusion.guidance.mix``, as the diffusion stages mix their outputs.
The ⟨z_i, z_t⟩ token is drawn first, from the top of the distribution the prior predicts for the
caption (``ARPrior.top_dot``).
"""

from __future__ import annotations

import torch
from tqdm.auto import trange

from unclip.diffusion.guidance import mix
from unclip.networks.clip import TextEncoding
from unclip.networks.prior_ar import ARPrior
from unclip.pipeline.denoisers import with_uncond


@torch.no_grad()
def sample_ar_prior(prior: ARPrior, text: TextEncoding, empty: TextEncoding, guidance: float, generator, *,
                    temperature: float = 1.0, progress: bool = False) -> torch.Tensor:
    """Raw CLIP image embeddings (B, D) for captions ``text`` (B rows). ``generator``: one
    ``torch.Generator``, or a list of them, one per row."""
    batch, device = len(text.emb), text.emb.device
    codes = torch.zeros(batch, 0, dtype=torch.long, device=device)
    null = torch.full((batch,), prior.null_dot, device=device)  # the dot logits do not see the dot token
    dot_logits = prior(codes, dot=null, text_emb=text.emb, text_tokens=text.tokens, text_mask=text.mask)[:, 0]
    dot = draw(prior.top_dot(dot_logits), generator)[:, 0]
    guided = guidance != 1
    if guided:
        text = with_uncond(text, empty)
        dot = torch.cat([torch.full_like(dot, prior.null_dot), dot])
    for _ in trange(prior.length, desc="prior (autoregressive)", disable=not progress, leave=False):
        inputs = torch.cat([codes, codes]) if guided else codes
        hidden = prior.hidden(inputs, dot=dot, text_emb=text.emb, text_tokens=text.tokens, text_mask=text.mask)
        logits = prior.logits(hidden[:, -1]).float()  # the next code's only
        if guided:
            logits = mix(*logits.chunk(2), guidance)
        probs = torch.softmax(logits / temperature, dim=-1)
        codes = torch.cat([codes, draw(probs, generator)], dim=1)
    return prior.dequantise(codes)


def draw(probs: torch.Tensor, generator) -> torch.Tensor:
    """One index per row (B, 1) from weights (B, V), on ``generator``'s device (a list: one per row)."""
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(p[None].to(g.device), 1, generator=g).to(probs.device)
                          for p, g in zip(probs, generator)])
    source = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(source), 1, generator=generator).to(probs.device)
