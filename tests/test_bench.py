"""The benchmark scripts run (their figures are measured by hand, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_sampling_bench(*args: str) -> tuple[dict, str]:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "sampling.py"), "--steps", "2", "2", "2",
                             "--batches", "1", "--repeats", "1", "--no-bf16", "--json", *args],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout


def test_the_sampling_bench_compares_like_for_like_on_tiny_weights():
    report, _ = run_sampling_bench("--profile", "--configs", "configs/tiny")
    (same,) = [r for r in report["rows"] if "same samplers" in r["label"]]
    (diffusers,) = [r for r in report["rows"] if r["label"].startswith("diffusers")]
    assert same["batch"] == 1 and same["seconds"] > 0 and diffusers["ratio"] is None
    assert abs(same["ratio"] - same["seconds"] / diffusers["seconds"]) < 1e-9
    larger = [r for r in report["rows"] if r["label"].endswith("→ 128")]  # the tiny cascade's last side
    assert larger and all(r["ratio"] is None for r in larger)  # other work than diffusers' → 64: no ratio
    profiled = {p["label"]: p for p in report["profile"]}
    assert set(profiled) == {same["label"], diffusers["label"]}
    for split in profiled.values():  # both UNets are convolutional: their convolutions take time
        assert split["convolution"] > 0 and split["top-level ops"] > 100


def test_both_benches_refuse_to_profile_off_the_cpu():  # the profile splits CPU time; a GPU would hide in it
    for script in ("sampling.py", "train_peers.py"):
        result = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--device", "cuda", "--profile"],
                                capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert result.returncode == 2 and "use the CUDA profiler" in result.stderr, (script, result.stderr[-2000:])
        assert "Traceback" not in result.stderr


def test_the_operator_profile_splits_a_calls_wall_time_by_operator_kind():
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from op_profile import KINDS, kind_of, time_split

    assert [kind_of(n) for n in ("aten::mkldnn_convolution", "aten::addmm", "aten::mm", "aten::native_group_norm",
                                 "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::silu")] == \
        ["convolution", "matmul", "matmul", "normalisation", "attention", "other ops"]
    conv, x = torch.nn.Conv2d(8, 8, 3, padding=1), torch.randn(2, 8, 32, 32)
    w = torch.randn(256, 256)

    def call():
        with torch.no_grad():
            for _ in range(5):
                conv(x)
            w @ w

    split = time_split(call, calls=2)
    parts = [split[k] for k in [*KINDS, "other ops", "outside ops"]]
    assert abs(sum(parts) - split["wall"]) < 1e-6 or split["outside ops"] == 0
    assert split["convolution"] > 0 and split["matmul"] > 0 and split["attention"] == 0
    assert split["top-level ops"] == 6  # five convolutions and one matmul called from Python


def test_the_sampling_bench_runs_on_the_shipped_cascade_and_says_why_rows_are_missing():
    report, out = run_sampling_bench("--checkpoint", "checkpoints/shapes")
    rows = report["rows"]
    assert "(no like-for-like rows: the 'unclip' sampler does not support v prediction" in out
    assert not any("same samplers" in r["label"] or r["label"].startswith("diffusers") for r in rows)
    assert {r["label"].split("→")[1].strip() for r in rows} == {"256", "1024"}
    assert all(r["seconds"] > 0 and r["ratio"] is None for r in rows)


def test_the_server_bench_reports_every_burst_on_tiny_weights():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "serve.py"), "--random-from", "configs/tiny",
                             "--concurrency", "1", "2", "--max-batch", "2", "--requests", "3", "--steps", "1",
                             "--json"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])["rows"]
    assert [(r["max_batch"], r["concurrency"], r["requests"]) for r in rows] == [(2, 1, 3), (2, 2, 3)]
    for r in rows:
        assert abs(r["images_per_s"] - 3 / r["seconds"]) < 1e-9 and 0 < r["median_latency_s"] <= r["seconds"]


def test_the_training_peer_bench_times_unclip_beside_diffusers_blocks_and_says_why_dalle2_is_missing():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "train_peers.py"), "--models", "prior",
                             "--precisions", "fp32", "--steps", "1", "--peak-size", "256", "--json"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(no DALLE2-pytorch rows: pass --peer-python" in result.stdout
    report = json.loads(result.stdout.strip().splitlines()[-1])
    rows = {r["impl"]: r for r in report["rows"]}
    for r in rows.values():  # MFU: the counted FLOPs per second over the measured peak
        assert r["flops"] > 6 * r["params"] * r["batch"] * 0.5  # at least ~3 FLOPs per weight and sample
        assert abs(r["mfu"] - r["flops"] / r["seconds"] / report["peak_flops"]) < 1e-9
    assert set(rows) == {"unclip", "diffusers blocks"} and rows["unclip"]["ratio"] is None
    assert abs(rows["unclip"]["params"] - rows["diffusers blocks"]["params"]) / rows["unclip"]["params"] < 0.01
    peer = rows["diffusers blocks"]
    assert abs(peer["ratio"] - peer["samples_per_s"] / rows["unclip"]["samples_per_s"]) < 1e-9


def test_the_training_peer_bench_takes_the_decoders_batch_and_device():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "train_peers.py"), "--models", "decoder-5.8M",
                             "--precisions", "fp32", "--steps", "1", "--peak-size", "64", "--batch", "2",
                             "--device", "cpu", "--profile", "--json"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["device"].startswith("cpu")
    assert {r["batch"] for r in report["rows"]} == {2} and len(report["rows"]) == 2
    (split,) = report["profile"]  # unclip's decoder step: its convolutions and their gradients take time
    assert split["model"] == "decoder-5.8M" and split["convolution"] > 0 and split["wall"] > 0


def test_the_upscale_quality_bench_scores_shapes_renders(tiny_pipeline_dir):
    args = ["--checkpoint", str(tiny_pipeline_dir), "--data", "shapes", "--size", "64", "--images", "2", "--steps", "1"]
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "upscale_quality.py"), *args],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["images"] == 2 and report["size"] == 64
    assert report["real_detector_all"] == 1.0  # the detector reads every real render of a held-out seed
    assert 20 < report["bicubic_psnr"] < 60 and report["real_background_std"] == 0.0
    assert report["psnr"] < report["bicubic_psnr"]  # random weights: worse than bicubic


def test_grain_is_measured_away_from_edges():
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("upscale_quality", ROOT / "bench" / "upscale_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    real = np.full((64, 64, 3), 255, np.uint8)
    real[20:40, 20:40] = (200, 0, 0)
    flat = bench.flat_region(real)
    assert flat[0, 0] and not flat[18, 30] and not flat[30, 30] and flat[10, 30]  # 2 px margin at side 64
    halo = real.astype(float)
    halo[18:20, 20:40] = 128  # a blurred edge: not grain
    assert bench.background_std(halo, real) == 0.0
    grainy = halo + np.random.default_rng(0).normal(0, 3, halo.shape)
    assert 2.5 < bench.background_std(grainy, real) < 3.5


def test_the_precision_fid_bench_scores_the_evals_own_fp32_images(tiny_pipeline_dir, capsys):
    """Its fp32 FID is ``unclip eval``'s FID on the same scenes and seeds; bf16 is a different,
    nearby sample set; the grain control moves the images."""
    import importlib.util

    from unclip.evaluation.fid import InceptionFeatures
    from unclip.evaluation.report import EvalSettings, fid
    from unclip.pipeline import UnCLIPPipeline

    spec = importlib.util.spec_from_file_location("precision_fid", ROOT / "bench" / "precision_fid.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--checkpoint", str(tiny_pipeline_dir), "--images", "6", "--batch", "3",
                       "--decoder-steps", "1", "--grain", "20"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pipe = UnCLIPPipeline.from_pretrained(tiny_pipeline_dir)
    side = pipe.sizes[0]
    settings = EvalSettings(fid_images=6, fid_sizes=(side,), batch=3, steps={"decoder": 1})
    expected = fid(pipe, [side], settings, InceptionFeatures())[str(side)]
    assert abs(report["fid"]["fp32"] - expected) < 1e-3 * expected
    assert report["fid"]["bf16"] != report["fid"]["fp32"] and report["fid"]["fp32 + grain"] != report["fid"]["fp32"]
    assert 0 < report["bf16_vs_fp32_levels"]["mean"] <= report["bf16_vs_fp32_levels"]["max"]


def test_the_training_throughput_bench_times_a_config_file_in_both_layouts():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--configs",
                             "configs/tiny/decoder.yaml", "--precisions", "no", "--layouts", "nchw", "channels_last",
                             "--steps", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("configs/tiny/decoder.yaml")]
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [("decoder", "fp32", "nchw", "no"),
                                                        ("decoder", "fp32", "channels_last", "no")]
    assert all(float(r[-2]) > 0 and float(r[-1]) > 0 for r in rows)  # samples/s, the first step's seconds


def test_the_training_throughput_bench_times_the_compiled_step(tmp_path, monkeypatch):
    import importlib.util

    from unclip.training import loop

    graphs = []
    monkeypatch.setattr(loop, "COMPILE_BACKEND", lambda graph, inputs: graphs.append(graph) or graph.forward)
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "bench" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    stage, batch, fastest, first = bench.measure(ROOT / "configs/tiny/decoder.yaml", "no", 1, tmp_path, compile=True)
    assert (stage, batch) == ("decoder", 4) and fastest > 0 and first > 0
    assert graphs, "--compile did not time the forward through torch.compile"


def test_the_precision_time_bench_times_three_precisions_and_restores_the_tail(tiny_pipeline_dir, capsys):
    import importlib.util

    import unclip.pipeline.sampling as sampling

    spec = importlib.util.spec_from_file_location("precision_time", ROOT / "bench" / "precision_time.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    kept = sampling.DECODER_FP32_BELOW
    seen = []
    original = sampling.fp32_below
    sampling.fp32_below = lambda fn, t_max: seen.append(t_max) or original(fn, t_max)
    try:
        assert bench.main(["--checkpoint", str(tiny_pipeline_dir), "--batches", "1", "--size", "64",
                           "--repeats", "1"]) == 0
    finally:
        sampling.fp32_below = original
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert [r["label"] for r in rows] == [label for label, _, _ in bench.MODES]
    assert all(r["batch"] == 1 and r["seconds"] > 0 for r in rows)
    assert sampling.DECODER_FP32_BELOW == kept
    assert min(seen) < 0 < max(seen)  # "bf16 throughout" really switched the tail off, the others not


def test_the_prior_cache_bench_times_both_ways_and_they_agree(tiny_pipeline_dir, capsys, monkeypatch):
    import importlib.util

    from unclip.networks.prior import Prior
    from unclip.networks.prior_cache import PrefixCache

    spec = importlib.util.spec_from_file_location("prior_cache", ROOT / "bench" / "prior_cache.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    counts = {"full": 0, "cached": 0}
    full, cached = Prior.forward, PrefixCache.step
    monkeypatch.setattr(Prior, "forward", lambda *a, **k: counts.__setitem__("full", counts["full"] + 1) or full(*a, **k))
    monkeypatch.setattr(PrefixCache, "step",
                        lambda *a, **k: counts.__setitem__("cached", counts["cached"] + 1) or cached(*a, **k))
    assert bench.main(["--checkpoint", str(tiny_pipeline_dir), "--batches", "1", "--size", "64", "--repeats", "1",
                       "--precision", "fp32", "--karlo-layers", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rows = json.loads(out[-1])["rows"]
    assert [r["label"] for r in rows] == ["prior stage (sample_prior)", "text → 64 (generate)",
                                          "one step, Karlo-wide prior, 1 layers"]
    assert all(r["cache_on"] > 0 and r["cache_off"] > 0 for r in rows)
    assert counts["full"] > 0 and counts["cached"] > 0  # "off" ran the full forward, "on" the cached steps
    difference = float(next(line for line in out if "largest difference" in line).split()[-1])
    assert difference < 1e-4  # fp32: the two ways sample the same embeddings


def test_the_peer_bench_counts_the_cpus_fused_attention_like_torch_counts_cudas(monkeypatch):
    """FlopCounterMode has no formula for the CPU's flash-attention kernels: unclip's attention
    (scaled_dot_product_attention) counted zero FLOPs there while a peer's einsum attention counted
    in full, which skewed the MFU comparison."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from train_peers import step_flops

    shape = (2, 4, 64, 16)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))

    def attend():
        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()

    expected = sdpa_flop_count(shape, shape, shape) + sdpa_backward_flop_count(shape, shape, shape, shape)
    assert step_flops(attend) == expected > 0
