"""Training speed beside the peers: one optimisation step (forward, loss, backward, AdamW) of the
unclip decoder and prior, of DALLE2-pytorch's ``Unet``+``Decoder`` and ``DiffusionPriorNetwork``+
``DiffusionPrior``, and of diffusers' blocks used directly, at about equal parameter counts, in one run.

    python bench/train_peers.py --peer-python /path/to/dalle2-venv/bin/python [--precisions fp32 bf16]
                                [--models decoder-5.8M decoder-26M prior] [--steps 3] [--peak-size 4096]
                                [--device cpu|cuda] [--batch N] [--json]

DALLE2-pytorch (``dalle2-pytorch==1.15.6``) pins ``open-clip-torch<3``, so it lives in its own
virtual environment and runs as a subprocess of this script (``--worker dalle2``):

    python -m venv /tmp/peer-venv && /tmp/peer-venv/bin/pip install torch dalle2-pytorch==1.15.6

Without ``--peer-python`` its rows are left out (said in one line). Sizes: decoders at 64×64, batch 16,
conditioned on a 256-d image embedding and 77 text tokens of width 256 (~5.8M: channels 32,64,128,128,
one layer per block; ~26M: 64,128,192,256, two); priors of width 256, 6 layers, 77 text tokens, batch 64.
``--batch`` replaces the decoders' batch (a GPU needs far more than 16 to be busy); ``--device``
defaults to CUDA where there is one. Each row is the median of ``--steps`` timed steps after a warm-up
step, on one batch already in memory (on the device; CUDA is synchronised around each step);
bf16 is autocast around the forward and the loss. Reported: parameters, seconds per step, samples per
second, the ratio of each peer's samples/s to unclip's (above 1: the peer is faster) and the MFU: the
step's FLOPs (``torch.utils.flop_counter.FlopCounterMode`` over one step: the matmuls and convolutions of
forward and backward, not the optimiser's elementwise work) per second, as a share of this machine's bf16
matmul peak, measured in the same run from a ``--peak-size``³ bf16 matmul (best of 5). A timing, so
nothing else should run meanwhile; ``OMP_NUM_THREADS`` applies to every process. With ``--json`` the last
line is ``{"peak_flops": …, "rows": [{"model", "impl", "precision", "params", "batch", "seconds",
"samples_per_s", "ratio", "flops", "mfu"}]}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time

import torch

DECODERS = {"decoder-5.8M": ((32, 64, 128, 128), 1), "decoder-26M": ((64, 128, 192, 256), 2)}
MODELS = (*DECODERS, "prior")
SIDE, DECODER_BATCH, PRIOR_BATCH, WIDTH, TOKENS, HEAD_DIM = 64, 16, 64, 256, 77, 32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, steps: int, device: torch.device = torch.device("cpu")) -> float:
    """Median seconds of ``steps`` calls of ``step`` after one warm-up call."""
    step()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def trainer(model: torch.nn.Module, loss_fn, precision: str, device: torch.device = torch.device("cpu")):
    """One AdamW step of ``loss_fn()`` (autocast to bf16 when asked)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def step():
        with cast:
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def step_flops(step) -> int:
    """FLOPs of one call of ``step``, as ``FlopCounterMode`` counts them, with the CPU's fused
    attention kernels counted as torch counts its CUDA ones (it has no formula for the CPU's, so
    attention through ``scaled_dot_product_attention`` counted zero there, while a peer that
    attends with einsum was counted in full)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    cpu = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: forward,
           torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}
    with FlopCounterMode(display=False, custom_mapping=cpu) as counter:
        step()
    return counter.get_total_flops()


def matmul_peak(size: int, repeats: int = 5, device: torch.device = torch.device("cpu")) -> float:
    """FLOP/s of the fastest of ``repeats`` ``size``³ bf16 matmuls (each after a warm-up one)."""
    a, b = (torch.randn(size, size, generator=torch.Generator().manual_seed(i)).bfloat16().to(device) for i in (0, 1))
    return 2 * size ** 3 / min(timed(lambda: a @ b, 1, device) for _ in range(repeats))


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def inputs(model: str, generator: torch.Generator, decoder_batch: int = DECODER_BATCH,
           device: torch.device = torch.device("cpu")) -> dict[str, torch.Tensor]:
    """The batch every implementation of ``model`` trains on."""
    b = PRIOR_BATCH if model == "prior" else decoder_batch
    out = {"image_emb": torch.randn(b, WIDTH, generator=generator),
           "text_emb": torch.randn(b, WIDTH, generator=generator),
           "text_tokens": torch.randn(b, TOKENS, WIDTH, generator=generator)}
    if model != "prior":
        out["images"] = torch.rand(b, 3, SIDE, SIDE, generator=generator) * 2 - 1
    return {k: v.to(device) for k, v in out.items()}


# unclip and diffusers, in this process

def unclip_case(model: str, batch: dict):
    from unclip.config import DecoderConfig, DecoderStageConfig, PriorConfig, PriorStageConfig
    from unclip.diffusion.losses import GaussianDiffusion
    from unclip.networks.clip import TextEncoding
    from unclip.networks.decoder import Decoder
    from unclip.networks.prior import Prior
    from unclip.training.losses import decoder_loss, prior_loss

    b, device = len(batch["image_emb"]), batch["image_emb"].device
    mask = torch.ones(b, TOKENS, dtype=torch.bool, device=device)
    text = TextEncoding(batch["text_tokens"], mask, batch["text_emb"])
    empty = TextEncoding(torch.zeros(1, TOKENS, WIDTH, device=device), torch.ones(1, TOKENS, dtype=torch.bool,
                         device=device), torch.zeros(1, WIDTH, device=device))
    if model == "prior":
        net = Prior(PriorConfig(num_attention_heads=WIDTH // 64, attention_head_dim=64, num_layers=6,
                                embedding_dim=WIDTH, num_embeddings=TOKENS, text_drop=0.1))
        diffusion = GaussianDiffusion(PriorStageConfig().diffusion)  # the stage's own loss, as unclip trains
        return net, lambda: prior_loss(net, diffusion, image_emb=batch["image_emb"], text=text, empty=empty)["loss"]
    channels, layers = DECODERS[model]
    net = Decoder(DecoderConfig(sample_size=SIDE, block_out_channels=list(channels), layers_per_block=layers,
                                attention_resolutions=[16, 8], attention_head_dim=HEAD_DIM,
                                cross_attention_dim=channels[-1], clip_embeddings_dim=WIDTH))
    diffusion = GaussianDiffusion(DecoderStageConfig().diffusion, vlb_weight=net.cfg.vlb_weight)  # + VLB term
    return net, lambda: decoder_loss(net, diffusion, images=batch["images"], image_emb=batch["image_emb"],
                                     text=text, empty=empty)["loss"]


def diffusers_case(model: str, batch: dict):
    """diffusers' blocks with their own conditioning inputs and a plain eps (prior: x0) MSE."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, PriorTransformer, UNet2DConditionModel

    noise_schedule = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    if model == "prior":
        net = PriorTransformer(num_attention_heads=WIDTH // 64, attention_head_dim=64, num_layers=6,
                               embedding_dim=WIDTH, num_embeddings=TOKENS, additional_embeddings=4)

        def loss():
            x0 = batch["image_emb"]
            t = torch.randint(0, 1000, (len(x0),), device=x0.device)
            x_t = noise_schedule.add_noise(x0, torch.randn_like(x0), t)
            out = net(x_t, t, proj_embedding=batch["text_emb"], encoder_hidden_states=batch["text_tokens"],
                      attention_mask=torch.ones(len(x0), TOKENS, dtype=torch.bool, device=x0.device)
                      ).predicted_image_embedding
            return F.mse_loss(out, x0)
        return net, loss
    channels, layers = DECODERS[model]
    attends = [SIDE // 2**i in (16, 8) for i in range(len(channels))]
    net = UNet2DConditionModel(
        sample_size=SIDE, in_channels=3, out_channels=3, block_out_channels=channels, layers_per_block=layers,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)),
        cross_attention_dim=WIDTH, attention_head_dim=HEAD_DIM, norm_num_groups=8,
        class_embed_type="projection", projection_class_embeddings_input_dim=WIDTH)

    def loss():
        x0 = batch["images"]
        t = torch.randint(0, 1000, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        out = net(noise_schedule.add_noise(x0, noise, t), t, encoder_hidden_states=batch["text_tokens"],
                  class_labels=batch["image_emb"]).sample
        return F.mse_loss(out, noise)
    return net, loss


# DALLE2-pytorch, in its own environment (--worker dalle2)

def dalle2_case(model: str, batch: dict):
    from dalle2_pytorch import Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet

    if model == "prior":
        net = DiffusionPrior(DiffusionPriorNetwork(dim=WIDTH, depth=6, dim_head=64, heads=WIDTH // 64,
                                                   num_timesteps=1000, max_text_len=TOKENS),
                             image_embed_dim=WIDTH, timesteps=1000, cond_drop_prob=0.1,
                             condition_on_text_encodings=True)
        return net, lambda: net(text_embed=batch["text_emb"], image_embed=batch["image_emb"],
                                text_encodings=batch["text_tokens"])
    channels, layers = DECODERS[model]
    # cond_dim below the embedding width: with cond_dim == image_embed_dim, 1.15.6 skips its projection
    # to four image tokens and then fails on the null embedding's shape
    unet = Unet(dim=channels[0], dim_mults=tuple(c // channels[0] for c in channels), num_resnet_blocks=layers,
                image_embed_dim=WIDTH, text_embed_dim=WIDTH, cond_dim=128, cond_on_text_encodings=True,
                cond_on_image_embeds=True, max_text_len=TOKENS, attn_dim_head=HEAD_DIM,
                attn_heads=channels[-1] // HEAD_DIM)
    net = Decoder(unet, image_size=SIDE, timesteps=1000, learned_variance=True, auto_normalize_img=False)
    return net, lambda: net(batch["images"], image_embed=batch["image_emb"], text_encodings=batch["text_tokens"])


CASES = {"unclip": unclip_case, "diffusers blocks": diffusers_case, "DALLE2-pytorch": dalle2_case}


def measure(impl: str, model: str, precision: str, steps: int, decoder_batch: int = DECODER_BATCH,
            device: torch.device = torch.device("cpu")) -> dict:
    torch.manual_seed(0)
    batch = inputs(model, torch.Generator().manual_seed(0), decoder_batch, device)
    net, loss_fn = CASES[impl](model, batch)
    net.to(device).train()
    step = trainer(net, loss_fn, precision, device)
    flops = step_flops(step)  # also the warm-up
    seconds = timed(step, steps, device)
    b = len(batch["image_emb"])
    return {"model": model, "impl": impl, "precision": precision, "params": params(net), "batch": b,
            "seconds": seconds, "samples_per_s": b / seconds, "ratio": None, "flops": flops}


def profile_unclip(models, precisions, batch: int) -> list[dict]:
    """Where one unclip training step's time goes on the CPU (``bench/op_profile.py``), per model and precision."""
    from op_profile import profile_cases

    def step(model: str, precision: str):
        torch.manual_seed(0)
        net, loss_fn = unclip_case(model, inputs(model, torch.Generator().manual_seed(0), batch))
        run = trainer(net.train(), loss_fn, precision)
        run()  # warm-up
        return run

    title = "where unclip's step goes (torch.profiler, fastest of 3 profiled steps; share of its wall time):"
    return profile_cases(title, ((f"{m} {p}", step(m, p), {"model": m, "precision": p})  # built one at a time
                                 for m in models for p in precisions))


def run_worker(args) -> int:
    rows = [measure("DALLE2-pytorch", m, p, args.steps, args.batch, torch.device(args.device))
            for m in args.models for p in args.precisions]
    print(json.dumps({"rows": rows}))
    return 0


def peer_rows(args) -> list[dict]:
    command = [args.peer_python, __file__, "--worker", "dalle2", "--steps", str(args.steps),
               "--models", *args.models, "--precisions", *args.precisions, "--batch", str(args.batch),
               "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the DALLE2-pytorch worker failed ({args.peer_python}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["rows"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", help="python of a virtual environment with dalle2-pytorch==1.15.6")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (median)")
    parser.add_argument("--peak-size", type=int, default=4096, help="side of the bf16 matmul that sets the peak")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=DECODER_BATCH, help="the decoders' batch")
    parser.add_argument("--profile", action="store_true",
                        help="also split unclip's step time into operator kinds and the rest (CPU only)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=["dalle2"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.peak_size < 1 or args.batch < 1:
        parser.error("--steps, --peak-size and --batch must be at least 1")
    if args.worker:
        return run_worker(args)
    if args.profile and args.device != "cpu":
        parser.error("--profile splits CPU time; on a GPU use the CUDA profiler")

    device = torch.device(args.device)
    peak = matmul_peak(args.peak_size, device=device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; one optimisation step, median of "
          f"{args.steps}; bf16 matmul peak {peak / 1e9:.0f} GFLOP/s ({args.peak_size}³)")
    rows = [measure(impl, m, p, args.steps, args.batch, device) for m in args.models for p in args.precisions
            for impl in ("unclip", "diffusers blocks")]
    if args.peer_python:
        rows += peer_rows(args)
    else:
        print("(no DALLE2-pytorch rows: pass --peer-python, the python of a venv with dalle2-pytorch==1.15.6)")
    ours = {(r["model"], r["precision"]): r["samples_per_s"] for r in rows if r["impl"] == "unclip"}
    print(f"{'model':<13} {'implementation':<16} {'precision':<9} {'params':>8} {'batch':>5} {'s/step':>7} "
          f"{'samples/s':>9} {'peer/unclip':>11} {'GFLOP/step':>10} {'MFU':>6}")
    for r in sorted(rows, key=lambda r: (MODELS.index(r["model"]), r["precision"], r["impl"] != "unclip")):
        if r["impl"] != "unclip":
            r["ratio"] = r["samples_per_s"] / ours[r["model"], r["precision"]]
        r["mfu"] = r["flops"] / r["seconds"] / peak
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['model']:<13} {r['impl']:<16} {r['precision']:<9} {r['params'] / 1e6:>7.2f}M {r['batch']:>5} "
              f"{r['seconds']:>7.3f} {r['samples_per_s']:>9.1f} {ratio:>11} {r['flops'] / 1e9:>10.1f} "
              f"{100 * r['mfu']:>5.1f}%", flush=True)
    profiles = profile_unclip(args.models, args.precisions, args.batch) if args.profile else None
    if args.json:
        print(json.dumps({"peak_flops": peak, "device": where, "rows": rows,
                          **({"profile": profiles} if profiles is not None else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
