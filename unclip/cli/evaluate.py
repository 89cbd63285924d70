"""``unclip eval``: measure a cascade on the shapes set (``--suite shapes``, the default) or on the
emoji set (``--suite emoji --data DIR``, ``unclip.evaluation.emoji``); writes report.json,
report.md and a captioned sample sheet, samples.png. ``--suite emoji-clip`` measures a CLIP alone
(``--checkpoint`` a clip/ folder or a cascade holding one; ``unclip.evaluation.emoji_clip``).
``--device``, ``--out`` and the emoji data are checked before anything loads, and a flag the suite
does not use (``UNUSED``) is refused rather than ignored."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unclip.cli.common import (add_pipeline_arguments, check_folder, load_pipeline, pick_device, stage_value,
                               stage_values)

# flags each suite has no use for: refused when given, so that none is silently ignored
UNUSED = {
    "shapes": ("data",),
    "emoji": ("ablation_prompts", "detector_scenes", "prior_captions", "compare_priors", "decoder_candidates"),
    "emoji-clip": ("prior", "ablation_prompts", "fid_sizes", "fid_images", "detector_scenes", "prior_captions",
                   "variation_images", "interpolations", "steps", "sampler", "guidance", "compare_priors",
                   "decoder_candidates"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pipeline_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("eval"), help="report folder (default: eval/)")
    parser.add_argument("--suite", choices=["shapes", "emoji", "emoji-clip"], default="shapes",
                        help="which figures: the shapes set's (default), the emoji set's (needs --data), or "
                             "a CLIP's zero-shot figures on the emoji set (emoji-clip: --checkpoint is a clip/ "
                             "folder or a cascade, --data)")
    parser.add_argument("--data", help="--suite emoji and emoji-clip: the folder `unclip data emoji` wrote")
    parser.add_argument("--prompts", type=int,
                        help="prompts per binding category (shapes, default 200) or seen and held-out "
                             "(concept, style) prompts each (emoji, default 300)")
    parser.add_argument("--ablation-prompts", type=int,
                        help="prompts per category for the §5.1 ablation and the true-image-embedding rows "
                             "(default: as many as --prompts)")
    parser.add_argument("--fid-sizes", type=int, nargs="+", default=[64, 256], metavar="SIDE",
                        help="output sides to measure FID at (default 64 256; those the cascade makes)")
    parser.add_argument("--fid-images", type=int, default=1000, help="images per FID figure; 0 skips FID")
    parser.add_argument("--detector-scenes", type=int, default=500, help="real renders to check the detector on")
    parser.add_argument("--prior-captions", type=int, default=200, help="held-out captions for the prior figures")
    parser.add_argument("--variation-images", type=int, default=20, help="real renders to make variations of")
    parser.add_argument("--interpolations", type=int, default=10, help="image pairs to interpolate")
    parser.add_argument("--batch", type=int,
                        help="images per pipeline call (default 50); emoji-clip: images or captions per CLIP call "
                             "(default 256)")
    parser.add_argument("--steps", nargs="+", metavar="STAGE=N",
                        help="sampling steps per stage, e.g. decoder=25 (default: the checkpoint's)")
    parser.add_argument("--sampler", nargs="+", type=stage_value(str), metavar="[STAGE=]NAME",
                        help="ddpm, ddim, dpmpp, dpmpp-sde or unclip: for every stage, or STAGE=NAME, in place of the "
                             "checkpoint's own (e.g. for a step-count study; the report records the samplers)")
    parser.add_argument("--guidance", nargs="+", type=stage_value(float), metavar="[STAGE=]G",
                        help="classifier-free guidance scale: G for the prior and the decoder, or prior=G, "
                             "decoder=G, in place of the checkpoint's own (e.g. for a guidance study; the report "
                             "records it)")
    parser.add_argument("--compare-priors", nargs="+", metavar="NAME",
                        help="prior sub-folders of the checkpoint to put side by side through its decoder "
                             "(default: every prior sub-folder, e.g. prior and prior_ar, when there are several)")
    parser.add_argument("--decoder-candidates", type=int, default=1, metavar="K",
                        help="shapes suite: decoder samples per generated image, the one closest to its caption by "
                             "CLIP kept, as `unclip generate --decoder-candidates` (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true",
                        help="run the networks under bfloat16 autocast (about 2× faster on CPUs with AMX or AVX-512 "
                             "bf16; the report records it)")


def _settings(args: argparse.Namespace):
    from unclip.cli.common import stage_value
    from unclip.config import SAMPLED_STAGES
    from unclip.evaluation.report import EvalSettings

    if args.prompts is None:
        args.prompts = 300 if args.suite.startswith("emoji") else 200
    if args.batch is None:
        args.batch = 256 if args.suite == "emoji-clip" else 50
    counts = dict(prompts=args.prompts, fid_images=args.fid_images, detector_scenes=args.detector_scenes,
                  prior_captions=args.prior_captions, variation_images=args.variation_images,
                  interpolations=args.interpolations, batch=args.batch)
    for name, value in counts.items():
        if value < (0 if name == "fid_images" else 1):
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive whole number, got {value}")
    parse = stage_value(int)
    steps = stage_values([parse(s) for s in args.steps], SAMPLED_STAGES) if args.steps else None
    if args.decoder_candidates < 1:
        raise ValueError(f"--decoder-candidates: expected a positive whole number, got {args.decoder_candidates}")
    if args.ablation_prompts is not None and args.ablation_prompts < 1:
        raise ValueError(f"--ablation-prompts: expected a positive whole number, got {args.ablation_prompts}")
    if args.suite.startswith("emoji") and not args.data:
        raise ValueError(f"--suite {args.suite} needs --data DIR, a folder written by `unclip data emoji`")
    if args.suite == "emoji-clip":
        from unclip.evaluation.emoji_clip import EmojiClipSettings

        return EmojiClipSettings(data=args.data, prompts=args.prompts, batch=args.batch, seed=args.seed)
    if args.suite == "emoji":
        from unclip.evaluation.emoji import EmojiEvalSettings

        for name in ("detector_scenes", "prior_captions"):
            counts.pop(name)
        return EmojiEvalSettings(data=args.data, **counts, fid_sizes=tuple(args.fid_sizes), seed=args.seed,
                                 steps=steps)
    return EvalSettings(**counts, ablation_prompts=args.ablation_prompts, fid_sizes=tuple(args.fid_sizes),
                        seed=args.seed, steps=steps, decoder_candidates=args.decoder_candidates)


def _refuse_unused(args: argparse.Namespace) -> None:
    """A one-line error naming the flags given (not at their defaults) that ``--suite`` does not use."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    given = [name for name in UNUSED[args.suite] if getattr(args, name) != parser.get_default(name)]
    if given:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in given)
        raise ValueError(f"--suite {args.suite} does not use {flags}; leave {'them' if len(given) > 1 else 'it'} out")


def _samplers(args: argparse.Namespace):
    """--sampler as ``SamplingOptions.sampler`` takes it (``{stage: name}``, ``upsampler`` naming
    both upsamplers), its names checked here, before anything loads; None without the flag."""
    from unclip.config import SAMPLED_STAGES
    from unclip.diffusion.schedule import Sampler

    names = [s.value for s in Sampler]
    for _, name in args.sampler or []:
        if name not in names:
            raise ValueError(f"--sampler: unknown sampler {name!r} (choose from {', '.join(names)})")
    return stage_values(args.sampler, SAMPLED_STAGES)


def _guidance(args: argparse.Namespace):
    """--guidance as ``SamplingOptions.guidance`` takes it (``{stage: scale}``, a bare value for the
    prior and the decoder), checked here, before anything loads; None without the flag."""
    from unclip.config import GUIDED_STAGES

    for stage, scale in args.guidance or []:
        if stage is not None and stage not in GUIDED_STAGES:
            raise ValueError(f"--guidance: only the prior and the decoder are guided (got {stage}={scale:g})")
        if not scale >= 0:
            raise ValueError(f"--guidance: expected a scale >= 0, got {scale:g}")
    return stage_values(args.guidance, GUIDED_STAGES)


def use_sampling_defaults(pipe, sampler, guidance=None):
    """The pipeline with ``sampler`` and ``guidance`` (as ``SamplingOptions`` takes them) as its
    stages' defaults, resolved per stage by the pipeline's own plan."""
    from dataclasses import replace

    if sampler or guidance:
        for stage, run in pipe.plan(list(pipe.sampling), sampler=sampler, guidance=guidance).items():
            defaults = pipe.sampling[stage]
            pipe.sampling[stage] = replace(defaults, sampler=run.sampler,
                                           diffusion=replace(defaults.diffusion, guidance_scale=run.guidance))
    return pipe


def _priors_to_compare(args: argparse.Namespace) -> list[str]:
    """The prior sub-folders to compare: --compare-priors, else all of the checkpoint's when it has several."""
    from unclip.pipeline import default_checkpoint
    from unclip.pipeline.folder import prior_folders

    if args.random_from:
        if args.compare_priors:
            raise ValueError("--compare-priors: needs a --checkpoint folder, not --random-from")
        return []
    args.checkpoint_path = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    found = prior_folders(args.checkpoint_path)
    missing = [name for name in args.compare_priors or [] if name not in found]
    if missing:
        raise ValueError(f"--compare-priors: {args.checkpoint_path} has no prior in {missing[0]}/ "
                         f"(priors here: {', '.join(found) or 'none'})")
    return args.compare_priors or (found if len(found) > 1 else [])


def sample_sheet(pipe, path: Path, seed: int, steps=None, decoder_candidates: int = 1) -> Path:
    """One image per fixed prompt (``evaluate.SHEET_PROMPTS``) at the default size, captioned."""
    from unclip.cli.common import save_grid
    from unclip.evaluation.report import SHEET_PROMPTS

    images = pipe.generate(list(SHEET_PROMPTS), steps=steps, seed=seed, progress=False,
                           decoder_candidates=decoder_candidates)
    return save_grid(images, path, columns=4, captions=list(SHEET_PROMPTS))


def run_emoji(args: argparse.Namespace, settings) -> int:
    import torch

    from unclip.cli.common import save_grid
    from unclip.evaluation.emoji import markdown, run_emoji_eval, sheet_prompts

    samplers, guidance = _samplers(args), _guidance(args)  # checked before loading
    pipe = use_sampling_defaults(load_pipeline(args), samplers, guidance)
    with torch.autocast(pipe.device.type, dtype=torch.bfloat16, enabled=args.bf16):
        report = run_emoji_eval(pipe, settings)
        report["settings"]["bf16_autocast"] = args.bf16
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
        table = markdown(report)
        (args.out / "report.md").write_text(table)
        print(table)
        prompts = sheet_prompts(Path(settings.data), pipe.sizes[0], settings.seed)
        images = pipe.generate(prompts, steps=settings.steps, seed=settings.seed, progress=False)
        grid = save_grid(images, args.out / "samples.png", columns=4, captions=prompts)
    print(f"wrote {args.out / 'report.json'}, {args.out / 'report.md'} and {grid}")
    return 0


def run_emoji_clip(args: argparse.Namespace, settings, device) -> int:
    import torch

    from unclip.checkpoint import is_component, load_expected
    from unclip.evaluation.emoji_clip import markdown, run_emoji_clip_eval

    if not args.checkpoint:
        raise ValueError("--suite emoji-clip needs --checkpoint, a clip/ folder or a cascade folder holding one")
    folder = Path(args.checkpoint)
    folder = folder if is_component(folder) else folder / "clip"
    if not is_component(folder):
        raise ValueError(f"--checkpoint {args.checkpoint}: neither a clip/ component folder nor a cascade with one")
    clip = load_expected(folder, "clip").to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        report = run_emoji_clip_eval(clip, settings)
    report["settings"]["bf16_autocast"] = args.bf16
    report["checkpoint"] = str(folder)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (args.out / "report.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'report.json'} and {args.out / 'report.md'}")
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    from unclip.evaluation.report import markdown, run_eval

    _refuse_unused(args)
    settings = _settings(args)
    device = pick_device(args.device)  # --device and --out are checked before anything loads, for every suite
    check_folder(args.out, "--out")
    if args.suite.startswith("emoji"):
        from unclip.evaluation.emoji import read_eval_metadata

        read_eval_metadata(Path(args.data))
    if args.suite == "emoji":
        return run_emoji(args, settings)
    if args.suite == "emoji-clip":
        return run_emoji_clip(args, settings, device)
    priors = _priors_to_compare(args)  # checked before the long run
    samplers, guidance = _samplers(args), _guidance(args)
    pipe = use_sampling_defaults(load_pipeline(args), samplers, guidance)
    with torch.autocast(pipe.device.type, dtype=torch.bfloat16, enabled=args.bf16):
        report = run_eval(pipe, settings)
        report["settings"]["bf16_autocast"] = args.bf16
        if priors:
            from unclip.evaluation.priors import compare_priors
            from unclip.pipeline import UnCLIPPipeline

            pipes = {name: pipe if name == args.prior else
                     use_sampling_defaults(UnCLIPPipeline.from_pretrained(args.checkpoint_path, device=pipe.device,
                                                                 prior=name), samplers, guidance)
                     for name in priors}
            report["priors"] = compare_priors(pipes, settings, measured=(pipe, report["binding"]))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
        table = markdown(report)
        (args.out / "report.md").write_text(table)
        print(table)
        grid = sample_sheet(pipe, args.out / "samples.png", seed=args.seed, steps=settings.steps,
                            decoder_candidates=settings.decoder_candidates)
    print(f"wrote {args.out / 'report.json'}, {args.out / 'report.md'} and {grid}")
    return 0
