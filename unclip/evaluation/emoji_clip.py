"""`unclip eval --suite emoji-clip`: how well a CLIP alone knows the emoji set, zero-shot, before a
prior or a decoder is trained on it (the figures that choose the cascade's CLIP, issue 21).

For seen and held-out (concept, style) pairs, each pair's real render is compared with candidate
captions by cosine of the CLIP embeddings:

- **concept**: among ``"{annotation}, {style} style"`` of every concept drawn in that style,
  the rank of the right one (top-1, top-5);
- **paraphrase**: the same among ``"an emoji of {annotation}"`` for every concept of the set, a
  template no training caption used (top-5): does the text side generalise beyond the grammar?
- **style**: among the six ``"{annotation}, {style} style"`` of the right concept, the share
  where the prompted style ranks first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from unclip.data.emoji import caption
from unclip.evaluation.emoji import _renders, prompt_pairs, read_eval_metadata, render_index
from unclip.evaluation.report import in_batches

PARAPHRASE = "an emoji of {}"


@dataclass
class EmojiClipSettings:
    data: str  # the folder `unclip data emoji` wrote
    prompts: int = 300  # seen and held-out pairs, each
    batch: int = 256  # captions or images per CLIP call
    seed: int = 0


@torch.no_grad()
def _text(clip, captions: list[str], batch: int, desc: str) -> torch.Tensor:
    parts = [clip.encode_text(chunk).emb for _, chunk in in_batches(captions, batch, desc)]
    return F.normalize(torch.cat(parts).float(), dim=-1)


def _rank_hits(image: torch.Tensor, text: torch.Tensor, right: list[int]) -> tuple[int, int]:
    """(top-1, top-5) hits of each image row's right candidate among the text rows."""
    top = (image @ text.T).topk(min(5, len(text)), dim=-1).indices
    right_t = torch.tensor(right, device=top.device)[:, None]
    return int((top[:, :1] == right_t).sum()), int((top == right_t).any(-1).sum())


@torch.no_grad()
def run_emoji_clip_eval(clip, settings: EmojiClipSettings) -> dict:
    """The zero-shot figures of ``clip`` (a ClipEncoder, on any device) as a JSON-ready dict."""
    root = Path(settings.data)
    meta = read_eval_metadata(root)
    names = meta["annotations"]
    index = render_index(root, clip.image_size)
    pairs = prompt_pairs(meta, index, settings.prompts, settings.seed)
    styles = sorted(set(index.styles))
    by_style = {s: sorted({c for c, t in zip(index.concepts, index.styles) if t == s}) for s in styles}
    every = sorted(set(index.concepts))
    canonical = {s: _text(clip, [caption(names[c], s) for c in by_style[s]], settings.batch, f"captions: {s}")
                 for s in styles}
    paraphrase = _text(clip, [PARAPHRASE.format(names[c]) for c in every], settings.batch, "paraphrases")
    report: dict = {"settings": vars(settings).copy(), "styles": styles, "concepts": len(every)}
    for name, chosen in pairs.items():
        renders = _renders(root, clip.image_size, chosen)
        chosen = [p for p in chosen if p in renders]
        image = F.normalize(torch.cat([clip.encode_image(torch.stack([renders[p] for p in chunk]))
                                       for _, chunk in in_batches(chosen, settings.batch, f"images: {name}")]).float(),
                            dim=-1)
        own = _text(clip, [caption(names[c], s) for c, _ in chosen for s in styles], settings.batch,
                    f"style captions: {name}").reshape(len(chosen), len(styles), -1)
        top1 = top5 = para5 = 0
        for row, (concept, style) in zip(image, chosen):
            h1, h5 = _rank_hits(row[None], canonical[style], [by_style[style].index(concept)])
            top1, top5 = top1 + h1, top5 + h5
            para5 += _rank_hits(row[None], paraphrase, [every.index(concept)])[1]
        picked = torch.einsum("nd,nsd->ns", image, own).argmax(-1).tolist()
        style_hits = sum(styles[j] == style for j, (_, style) in zip(picked, chosen))
        n = max(len(chosen), 1)
        report[name] = {"top1": top1 / n, "top5": top5 / n, "paraphrase_top5": para5 / n, "style": style_hits / n,
                        "n": len(chosen)}
    return report


def markdown(report: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"Zero-shot, real renders against captions; {report['concepts']} concepts, seed "
             f"{report['settings']['seed']}.", "",
             "| pairs | concept top-1 | concept top-5 | paraphrase top-5 | style | n |", "|---|---|---|---|---|---|"]
    lines += [f"| {name.replace('_', '-')} | {pct(r['top1'])} | {pct(r['top5'])} | {pct(r['paraphrase_top5'])} | "
              f"{pct(r['style'])} | {r['n']} |" for name in ("seen", "held_out") for r in [report[name]]]
    return "\n".join(lines) + "\n"
