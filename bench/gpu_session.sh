#!/usr/bin/env bash
# One lent GPU, one call: the performance issue's benches (a training step beside the peers,
# sampling beside diffusers' UnCLIPPipeline) alone on the GPU, then the shapes upsamplers trained
# side by side until DEADLINE seconds after the start, exported (fp16) and tarred into $OUT.
#
#   bash bench/gpu_session.sh                  # on the GPU machine, from the repository root
#   SMOKE=1 DEADLINE=200 bash bench/gpu_session.sh   # the same on a CPU, tiny sizes (venv active)
#
# The GPU machine has torch, accelerate, transformers, einops, safetensors but not diffusers or
# open_clip, and no network: bring them as wheels in .whl/main (diffusers, open_clip_torch, ftfy,
# wcwidth, importlib_metadata) and DALLE2-pytorch's in .whl/peer (dalle2-pytorch==1.15.6 with
# open-clip-torch<3 and the rest of its imports: clip-anytorch coca-pytorch ema-pytorch
# embedding-reader kornia kornia-rs pytorch-warmup resize-right rotary-embedding-torch
# vector-quantize-pytorch einx frozendict loguru torch-einops-utils x-clip beartype webdataset
# braceexpand ftfy wcwidth), each fetched with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl/DIR NAME
# (24 MB in all). The two sets go to separate --target folders, so the peer runs with its own open_clip.
# Nothing here reads checkpoints/emoji: where the copy of the tree sent to the GPU machine is size-
# limited, leave it out (the two shipped cascades are 59 MB).
# SMOKE=1 runs the same on this CPU with tiny budgets (no wheels, no benches' full sizes).
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s)
SMOKE=${SMOKE:-0}
OUT=${OUT:-/tmp/gpuout}; mkdir -p "$OUT"
DEADLINE=${DEADLINE:-520}   # seconds after start when training stops
R=/tmp/r; rm -rf $R; mkdir -p $R
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

if [ "$SMOKE" = 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/main/*.whl || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/peer .whl/peer/*.whl || exit 1
  export PYTHONPATH=$PWD:/tmp/site
  printf '#!/bin/sh\nPYTHONPATH=/tmp/peer exec python3 "$@"\n' > /tmp/peerpy; chmod +x /tmp/peerpy
  PEER="--peer-python /tmp/peerpy"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, diffusers, open_clip, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'open_clip', open_clip.__version__, 'transformers', transformers.__version__)"
  CKPT=200 DEV=cuda PREC=bf16 W256=4 W1024=7 B256=64 B1024=32
  PEERS="--steps 5 --peak-size 8192"; SAMPLING="--repeats 3"
else
  export PYTHONPATH=$PWD
  PEER=${PEER_PYTHON:+--peer-python $PEER_PYTHON}  # a python with dalle2-pytorch, if any
  CKPT=2 DEV=cpu PREC=no W256=1 W1024=1 B256=2 B1024=2
  PEERS="--steps 1 --peak-size 256 --models prior --precisions fp32 --batch 2"; SAMPLING="--repeats 1 --batches 1 --steps 2 2 2 --no-bf16"
fi

# 1. benches, alone on the GPU (#17)
log "train_peers, batch 16"
timeout 170 python3 bench/train_peers.py --device $DEV $PEER $PEERS --json > "$OUT/peers16.txt" 2>&1
grep -v '^{' "$OUT/peers16.txt" | tail -22
if [ "$SMOKE" = 0 ]; then
  log "train_peers, decoder-26M bf16 at batch 256"
  timeout 80 python3 bench/train_peers.py --device $DEV $PEER --models decoder-26M --precisions bf16 \
    --batch 256 --steps 5 --peak-size 8192 --json > "$OUT/peers256.txt" 2>&1
  grep -v '^{' "$OUT/peers256.txt" | tail -6
fi
log "sampling, configs/tiny"
timeout 90 python3 bench/sampling.py --device $DEV $SAMPLING --json > "$OUT/sampling_tiny.txt" 2>&1
grep -v '^{' "$OUT/sampling_tiny.txt" | tail -14
log "sampling, checkpoints/shapes"
timeout 110 python3 bench/sampling.py --device $DEV --checkpoint checkpoints/shapes $SAMPLING --json > "$OUT/sampling_shapes.txt" 2>&1
grep -v '^{' "$OUT/sampling_shapes.txt" | tail -14

# 2. upsamplers side by side until the deadline (#18)
COMMON="training.mixed_precision=$PREC training.steps=100000 training.checkpoint_every=$CKPT training.sample_every=100000 training.log_every=50"
train() {  # seconds name config overrides...
  local secs=$1 name=$2 config=$3; shift 3
  timeout -s INT "$secs" python3 -m unclip train upsampler --config "$config" --output $R/$name $COMMON "$@" > $R/$name.log 2>&1
}
T=$(left); log "training for ${T}s"
if [ "$T" -gt 30 ]; then
  train $T up1024 configs/shapes/upsampler_1024.yaml training.init_from=checkpoints/shapes/upsampler_1024 \
    upsampler.residual=true diffusion.prediction=sample upsampler.degradation=null diffusion.sample_steps=1 \
    diffusion.sample_start=null training.batch_size=$B1024 training.lr=2e-4 training.ema_decay=0.995 \
    training.warmup_steps=50 training.num_workers=$W1024 &
  train $T up256 configs/shapes/upsampler_256.yaml training.init_from=checkpoints/shapes/upsampler_256 \
    training.batch_size=$B256 training.lr=2e-4 training.warmup_steps=50 training.num_workers=$W256 &
  train $T up256big configs/shapes/upsampler_256.yaml 'upsampler.block_out_channels=[64,128,128]' \
    upsampler.layers_per_block=2 training.batch_size=$B256 training.lr=3e-4 training.warmup_steps=100 \
    training.num_workers=$W256 &
  wait
fi
log "exporting"
for name in up1024 up256 up256big; do
  d=$R/$name
  [ -f $d/checkpoints/latest ] || { log "$name: no checkpoint"; tail -5 $d.log; continue; }
  step=$(cat $d/checkpoints/latest); step=$((10#${step#step_}))
  stage=$(grep -o 'upsampler_[0-9]*' $d/config.yaml | head -1)
  python3 -m unclip train upsampler --config $d/config.yaml --output $d --resume training.steps=$step > $d.export.log 2>&1 \
    || tail -5 $d.export.log
  python3 - "$d/export/$stage" <<'EOF'  # fp16 weight matrices, as the shipped checkpoints (unclip.checkpoint)
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from unclip.checkpoint import CONFIG_NAME, WEIGHTS_NAME, write_folder

folder = Path(sys.argv[1])
write_folder(folder, load_file(folder / WEIGHTS_NAME), json.loads((folder / CONFIG_NAME).read_text()), torch.float16)
EOF
  log "$name: step $step; $(grep -c . $d/log.jsonl) log lines; $(tail -1 $d/log.jsonl | cut -c1-300)"
  tar -C $d -cf "$OUT/$name.tar" export log.jsonl config.yaml
done
log "done"
