#!/usr/bin/env bash
# Multi-node training under Slurm: one task per machine, each starting accelerate launch for its
# GPUs. Submit with e.g. `sbatch --nodes 2 configs/accelerate/slurm.sh decoder configs/paper/decoder.yaml runs/decoder`;
# extra arguments are passed to `unclip train` (key=value overrides, --resume).
#SBATCH --job-name=unclip
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --output=%x-%j.out
set -euo pipefail
stage=$1 config=$2 output=$3
shift 3
gpus_per_node=${SLURM_GPUS_ON_NODE:-8}
main_ip=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun bash -c "accelerate launch --config_file configs/accelerate/two_nodes.yaml \
  --num_machines $SLURM_NNODES --num_processes $((SLURM_NNODES * gpus_per_node)) \
  --machine_rank \$SLURM_NODEID --main_process_ip $main_ip --main_process_port 29500 \
  -m unclip train $stage --config $config --output $output --resume $*"
