#!/usr/bin/env bash
# Multi-node training on a SLURM GPU cluster: one JAX process per GPU (default) or per node.
#
#   sbatch --nodes=2 --gpus-per-node=4 scripts/launch_slurm.sh configs/resnet152.py /shared/runs/r152
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 scripts/launch_slurm.sh ...  (not 4 GPUs:
#   name the tasks too, as the #SBATCH line below allocates 4 per node)
#   PER_NODE=1 sbatch --nodes=2 --gpus-per-node=4 scripts/launch_slurm.sh configs/resnet152.py DIR
#   (extra arguments go to jax_cifar.train, e.g. --config.train.batch_size=512)
#
# jax.distributed.initialize() reads the coordinator, process count and id from SLURM's variables
# (jax_cifar.parallel.maybe_initialize_distributed calls it when SLURM_NTASKS > 1). WORKDIR and the
# data (config.data.dir, or a tfds data_dir) must be on storage every node sees: all processes
# write their shards of each orbax checkpoint there, and process 0 writes metrics.jsonl and wandb.
# SLURM sends SIGTERM to every task before the time limit (--signal below gives 120 s of warning);
# the processes agree on a step, save it and exit 75; resubmitting the same command resumes (SLURM
# requeues a --requeue job only after a node failure or preemption, not at its time limit).
#SBATCH --job-name=jax-cifar
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --signal=TERM@120
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: sbatch [sbatch options] $0 CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
gpus_per_node=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-4}}
gpus_per_node=${gpus_per_node##*:}  # "h100:4" -> 4
nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}

allocated=${SLURM_NTASKS_PER_NODE:-$gpus_per_node}
allocated=${allocated%%[(,]*}  # "8(x2)" or "8,4" (as SLURM_TASKS_PER_NODE writes them) -> 8
if [ "${PER_NODE:-0}" = 1 ]; then
  # One process per node that drives all of its GPUs (JAX's SLURM detection would give it only
  # GPU SLURM_LOCALID=0, so name them all).
  per_node=1
  export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus_per_node - 1)))
else
  # One process per GPU: every task sees the node's GPUs and JAX takes GPU number SLURM_LOCALID
  # (so do not bind tasks to GPUs with --gpus-per-task here).
  if [ "$allocated" -lt "$gpus_per_node" ]; then  # srun would refuse the step, less clearly.
    echo "error: $gpus_per_node GPUs per node need --ntasks-per-node=$gpus_per_node in the sbatch" \
         "command (the allocation has $allocated tasks per node)" >&2
    exit 2
  fi
  per_node=$gpus_per_node
fi
# --ntasks too: srun takes the allocation's SLURM_NTASKS (4 per node, from the #SBATCH line) over a
# smaller --ntasks-per-node, and would start 4 processes per node on PER_NODE=1 (an audit).
tasks=(--ntasks=$((nodes * per_node)) --ntasks-per-node="$per_node")
# Each task's CPUs, named: srun of Slurm 22.05-23.02 does not take --cpus-per-task from sbatch (its
# tasks, with their data threads, ran on one core each), and with PER_NODE=1 the one task per node
# gets the CPUs of all the allocation's tasks on it (it had a quarter of them: a review).
# (Only where the allocation names them: an salloc without -c has none to share out.)
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
  tasks+=(--cpus-per-task=$(( SLURM_CPUS_PER_TASK * allocated / per_node )))
fi
# (No mkdir: process 0 makes WORKDIR and removes it again when the launch is refused; the others
# wait for it on the shared storage.)
# --label: each line of the job's one log begins with its task's number ("3: warning: ..."): every
# process prints its warnings and its stop line, and 16 copies of a line had named none (a review).
srun --kill-on-bad-exit=1 --label "${tasks[@]}" \
  python -m jax_cifar.train --config "$config" --workdir "$workdir" "$@"
