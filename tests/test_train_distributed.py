"""Data parallelism on CPU: two processes (gloo) through `accelerate launch` run the decoder loop in step.

`accelerate launch --cpu` starts several processes only through MPI; without it, `--multi_gpu`
starts them with torchrun and the loop asks accelerate for CPU (gloo) when there is no GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:  # concurrent test runs must not share the rendezvous port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks CPU (gloo) data parallelism")
def test_two_processes_stay_in_step_and_only_the_main_one_writes(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("the accelerate command is not installed")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(ROOT / "train" / "decoder.py"), "--config", str(ROOT / "configs/tiny/decoder.yaml"),
               "--output", str(out), "--no-progress", "training.steps=2", "training.checkpoint_every=1",
               "training.sample_every=1000"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

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
