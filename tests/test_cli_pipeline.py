"""``unclip generate | vary | interpolate | diff`` end to end on a tiny random checkpoint: each
writes the files it promises and prints their paths; bad arguments exit with status 2 and a
one-line message, without a traceback."""

import subprocess
import sys

import pytest
from conftest import REPO, TINY_CONFIGS
from PIL import Image

from unclip.cli import main

FAST = ["--steps", "prior=2", "decoder=2", "upsampler=2", "--quiet"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, [line for line in out.splitlines() if line], err


def test_generate_writes_pngs_and_a_grid(capsys, tiny_pipeline_dir, tmp_path):
    code, lines, _ = run_cli(capsys, "generate", "a red circle", "-n", 2, "--size", 64, "--seed", 0, *FAST,
                             "--out", tmp_path, "--checkpoint", tiny_pipeline_dir)
    assert code == 0
    expected = [tmp_path / "a-red-circle-0.png", tmp_path / "a-red-circle-1.png", tmp_path / "a-red-circle-grid.png"]
    assert lines == [str(p) for p in expected]
    assert Image.open(expected[0]).size == (64, 64) and Image.open(expected[2]).size == (128, 64)


@pytest.mark.parametrize("fast", [True, False])
def test_generate_is_bf16_by_default_only_where_the_cpu_has_bf16_units(capsys, tiny_pipeline, tiny_pipeline_dir,
                                                                      tmp_path, monkeypatch, fast):
    """--precision auto (the default) is bf16 autocast on a CPU with AVX512-BF16 or AMX, fp32 elsewhere;
    --precision fp32 / bf16 choose. Each CLI image equals the library's at that precision."""
    import numpy as np
    import torch

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: fast, raising=False)

    def cli(*extra):
        out = tmp_path / "-".join(extra or ("default",))
        code, lines, _ = run_cli(capsys, "generate", "a red circle", "--size", 32, "--seed", 3, *FAST, *extra,
                                 "--out", out, "--checkpoint", tiny_pipeline_dir)
        assert code == 0
        return np.asarray(Image.open(lines[0]))

    def library(precision):
        image = tiny_pipeline.generate("a red circle", size=32, seed=3, steps={"prior": 2, "decoder": 2}, progress=False,
                                       precision=precision)[0]
        return np.asarray(image)

    fp32, bf16 = library("fp32"), library("bf16")
    assert not np.array_equal(fp32, bf16)  # the two precisions are told apart
    assert np.array_equal(cli("--precision", "fp32"), fp32)
    assert np.array_equal(cli("--precision", "bf16"), bf16)
    assert np.array_equal(cli(), bf16 if fast else fp32)


def test_generate_with_random_weights_says_so(capsys, tmp_path):
    code, lines, err = run_cli(capsys, "generate", "a blue square", "--size", 32, *FAST, "--sampler", "ddim",
                               "--guidance", 3, "--out", tmp_path, "--random-from", TINY_CONFIGS)
    assert code == 0 and lines == [str(tmp_path / "a-blue-square-0.png")]
    assert "random weights" in err and "noise" in err
    assert Image.open(lines[0]).size == (32, 32)


def test_vary_interpolate_and_diff_write_their_files(capsys, tiny_pipeline_dir, photos, tmp_path):
    common = [*FAST, "--size", 32, "--checkpoint", tiny_pipeline_dir, "--out", tmp_path]
    code, lines, _ = run_cli(capsys, "vary", photos["astronaut"], "-n", 2, "--eta", 0.5, *common)
    assert code == 0 and [p.split("/")[-1] for p in lines] == [
        "astronaut-variation-0.png", "astronaut-variation-1.png", "astronaut-variation-grid.png"]

    code, lines, _ = run_cli(capsys, "interpolate", photos["astronaut"], photos["coffee"], "--frames", 3,
                             "--noise", "slerp", *common)
    assert code == 0 and len(lines) == 4 and lines[-1].endswith("astronaut-to-coffee.gif")
    gif = Image.open(lines[-1])
    assert gif.n_frames == 3 and gif.size == (32, 32)

    code, lines, _ = run_cli(capsys, "diff", photos["chelsea"], "--from", "a photo of a cat", "--to",
                             "a photo of a dog", "--thetas", 0, 0.3, *common)
    assert code == 0 and [p.split("/")[-1] for p in lines] == [
        "chelsea-to-a-photo-of-a-dog-0.png", "chelsea-to-a-photo-of-a-dog-1.png",
        "chelsea-to-a-photo-of-a-dog-strip.png"]
    assert Image.open(lines[-1]).size == (64, 32)
    assert all((tmp_path / p.split("/")[-1]).is_file() for p in lines)


@pytest.mark.parametrize("argv, message", [
    (["generate", "a red circle", "-n", "0"], "-n: expected a whole number >= 1"),
    (["generate", "", ], "prompt: the prompt is empty"),
    (["generate", "a " * 80], "tokens long after tokenisation"),
    (["generate", "a red circle", "--size", "48"], "size: 48 is not supported"),
    (["generate", "a red circle", "--steps", "0"], "steps: "),
    (["generate", "a red circle", "--sampler", "euler"], "sampler: 'euler' is not one of"),
    (["generate", "a red circle", "--decoder-candidates", "0"], "--decoder-candidates: expected a whole number >= 1"),
    (["vary", "{wide}"], "not square; crop it to a square first"),
    (["vary", "{missing}"], "image: cannot read"),
    (["interpolate", "{astronaut}", "{coffee}", "--frames", "1"], "--frames: expected a whole number >= 2"),
    (["diff", "{chelsea}", "--from", "a cat", "--to", ""], "to_text: the prompt is empty"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, tiny_pipeline_dir, photos, argv, message):
    files = {"wide": photos["wide"], "missing": photos["astronaut"].with_name("missing.png"),
             "astronaut": photos["astronaut"], "coffee": photos["coffee"], "chelsea": photos["chelsea"]}
    argv = [a.format(**files) for a in argv]
    code = main([*argv, "--quiet", "--checkpoint", str(tiny_pipeline_dir)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"unclip {argv[0]}: error: ") and message in lines[0]


@pytest.mark.parametrize("argv, message", [
    (["generate", "a red circle", "--device", "gpu"], "--device: 'gpu' is not a torch device"),
    (["generate", "a red circle", "--device", "cuda"], "--device: cuda asked for, but CUDA is not available here"),
    (["generate", "a red circle", "--out", "{file}"], "--out: {file} is a file, not a folder"),
    (["vary", "{picture}", "--out", "{file}/images"],
     "--out: {file} is a file, not a folder, so {file}/images cannot be created"),
    (["interpolate", "{picture}", "{picture}", "--duration", "700000"],
     "--duration: expected 0..655350 milliseconds per frame, got 700000"),
])
def test_a_bad_device_output_folder_or_duration_is_refused_before_loading(capsys, monkeypatch, tiny_pipeline_dir,
                                                                          tmp_path, argv, message):
    """Mistakes that used to surface as tracebacks after sampling (or loading) are one line before
    the pipeline loads; CUDA is made unavailable so that the cuda case holds on any machine."""
    import torch

    from unclip.pipeline import UnCLIPPipeline

    def never(*args, **kwargs):
        raise AssertionError("the pipeline was loaded")

    monkeypatch.setattr(UnCLIPPipeline, "from_pretrained", never)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    file, picture = tmp_path / "taken", tmp_path / "picture.png"
    file.write_text("a file, not a folder")
    Image.new("RGB", (32, 32), "red").save(picture)
    names = {"file": file, "picture": picture}
    code, lines, err = run_cli(capsys, *[a.format(**names) for a in argv], "--quiet", "--checkpoint",
                               tiny_pipeline_dir)
    assert code == 2 and lines == []
    (line,) = err.strip().splitlines()
    assert line.startswith(f"unclip {argv[0]}: error: {message.format(**names)}")


def test_stage_names_win_over_the_upsampler_alias_and_bare_values_whatever_the_order(tiny_pipeline):
    """--steps 10 upsampler=1 runs the upsamplers 1 step; upsampler_256=3 wins over upsampler=1."""
    from unclip.cli import build_parser
    from unclip.cli.common import sampling_options
    from unclip.config import GUIDED_STAGES, SAMPLED_STAGES

    def steps(*values):
        args = build_parser("generate").parse_args(["generate", "a red circle", "--steps", *values])
        plan = tiny_pipeline.plan(SAMPLED_STAGES, sampling_options(args, guided=GUIDED_STAGES))
        return [plan[stage].steps for stage in SAMPLED_STAGES]  # prior, decoder, upsampler_256, upsampler_1024

    assert steps("10", "upsampler=1") == [10, 10, 1, 1]
    assert steps("upsampler=1", "10") == [10, 10, 1, 1]
    assert steps("upsampler_256=3", "upsampler=1", "10") == [10, 10, 3, 1]
    assert steps("10", "upsampler=1", "upsampler_1024=4", "decoder=2") == [10, 2, 1, 4]


def test_missing_checkpoints_are_explained(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("UNCLIP_CHECKPOINT", str(tmp_path / "none"))
    code = main(["generate", "a red circle"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--checkpoint PATH" in err and "--random-from configs/tiny" in err
    assert main(["generate", "a red circle", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "--checkpoint: no pipeline folder" in capsys.readouterr().err


def test_argparse_errors_exit_2_without_traceback(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "a red circle", "-n", "many"])
    assert exit_.value.code == 2
    assert "-n: invalid" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "a red circle", "--steps", "decodr=3"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown stage 'decodr'" in err and "Traceback" not in err


def test_a_real_process_reports_errors_in_one_line(tmp_path):
    """A real process: exit status 2 and a one-line message on stderr, no traceback."""
    result = subprocess.run([sys.executable, "-m", "unclip.cli", "generate", "a red circle", "--checkpoint",
                             str(tmp_path / "nowhere")], capture_output=True, text=True, cwd=REPO, timeout=120,
                            check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"unclip generate: error: --checkpoint: no pipeline folder at {tmp_path / 'nowhere'}"]


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["nosuch"]])
def test_help_and_argument_errors_come_before_torch_is_imported(argv):
    """Only the named subcommand's arguments are built, so ``unclip --help`` or a mistyped command
    answers in a tenth of a second instead of waiting for torch (another subcommand's arguments
    import it)."""
    code = ("import sys\nfrom unclip.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('torch imported:', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO)
    assert "usage: unclip" in out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "torch imported: False"
