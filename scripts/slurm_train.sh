#!/bin/bash
# Multi-node training under SLURM: one torchrun per node, c10d rendezvous on the first node.
#
#   sbatch --nodes 4 scripts/slurm_train.sh ov3_b2 --data.path '/data/{000000..009999}.tar' \
#       --train.parallel fsdp --train.activation-checkpointing
#
# Everything after the preset is passed to `ov3 train` (dotted config overrides). run_dir must be
# on a filesystem every node sees. Resubmitting the same command resumes from the newest complete
# checkpoint (--train.resume auto). See docs/scaling.md.
#SBATCH --job-name=ov3
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: sbatch [--nodes N] scripts/slurm_train.sh <preset> [--overrides]" >&2
    exit 2
fi

GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
# Data loader workers and intra-op threads share the node's cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

srun --kill-on-bad-exit=1 --ntasks-per-node=1 torchrun \
    --nnodes "$SLURM_JOB_NUM_NODES" \
    --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-id "$SLURM_JOB_ID" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" \
    -m openvision3.cli train "$@"
