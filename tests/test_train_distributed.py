"""Data parallelism on CPU: two processes (gloo) through `accelerate launch` run the decoder loop in step.

`accelerate launch --cpu` starts several processes only through MPI; without it, `--multi_gpu`
starts them with torchrun and the loop asks accelerate for CPU (gloo) when there is no GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_stay_in_step_and_only_the_main_one_writes(tmp_path, accelerate_launch):
    out = tmp_path / "run"
    done = accelerate_launch("--multi_gpu", str(ROOT / "train" / "decoder.py"), "--config",
                             str(ROOT / "configs/tiny/decoder.yaml"), "--output", str(out), "--no-progress",
                             "training.steps=2", "training.checkpoint_every=1", "training.sample_every=1000")

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2]  # one writer: each step logged once
    assert all(r["samples_per_s"] > 0 for r in losses)
    checksums = [r for r in records if "checksum/process_0" in r]
    assert [r["step"] for r in checksums] == [1, 2]
    for r in checksums:  # both processes hold the same weights after every step
        assert r["checksum/process_1"] == r["checksum/process_0"]
    for step in (1, 2):
        state = json.loads((out / f"checkpoints/step_{step:06d}/state.json").read_text())
        assert state["written_by"] == 0
    assert done.stdout.count("exported") == 1

    from unclip.checkpoint import load_component

    assert load_component(out / "export" / "decoder").cfg.sample_size == 32
