"""`unclip params`: parameter counts built on the meta device; Karlo sizes match the released models."""

from pathlib import Path

import pytest

from unclip.cli import main
from unclip.cli.params import stage_parameter_counts

CONFIGS = Path(__file__).parents[1] / "configs"


def test_karlo_sizes_match_the_released_models():
    counts = dict(stage_parameter_counts(CONFIGS / "karlo"))
    assert abs(counts["prior"] - 1.0e9) / 1.0e9 < 0.10
    assert abs(counts["upsampler_256"] - 700e6) / 700e6 < 0.10
    assert abs(counts["decoder"] - 900e6) / 900e6 < 0.10


def test_paper_sizes():
    counts = dict(stage_parameter_counts(CONFIGS / "paper"))
    assert abs(counts["upsampler_256"] - 700e6) / 700e6 < 0.10
    assert abs(counts["upsampler_1024"] - 300e6) / 300e6 < 0.15
    # the paper's 3.5B decoder includes GLIDE's ~1.2B text transformer, which we replace by frozen CLIP tokens
    assert 2.0e9 < counts["decoder"] < 2.5e9


def test_cli_prints_one_line_per_stage(capsys):
    assert main(["params", str(CONFIGS / "tiny")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["clip", "decoder", "prior", "prior_ar", "upsampler_1024",
                                                   "upsampler_256"]
    assert main(["params", str(CONFIGS / "tiny" / "prior.yaml")]) == 0
    assert capsys.readouterr().out.split()[1] == "13,680"


def test_cli_help_and_bad_path(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "params" in capsys.readouterr().out
    assert main(["params", "/nonexistent/folder"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_import_pulls_no_training_or_server_dependency():
    """accelerate and transformers may come in through diffusers/open_clip; ours must not."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import unclip.config, unclip.networks.clip, unclip.networks.prior, unclip.networks.decoder, unclip.networks.upsampler, unclip.diffusion.schedule\n"
            "import unclip.checkpoint, unclip.training.losses, unclip.cli\n"
            "bad = [m for m in ('unclip.training.loop', 'fastapi', 'uvicorn', 'tensorboard', 'openai') if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
