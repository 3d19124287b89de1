#!/bin/bash
# Train on this machine: all its GPUs, or N CPU processes when it has none.
#
#   launch/local.sh CONFIG [--section.key VALUE ...] [--resume]
#
# Environment (optional): NUM_PROCESSES (default: number of GPUs, or 1 on a CPU machine),
# ACCELERATE_CONFIG (default: the checkout's accelerate_config.yaml when there are GPUs; e.g.
# launch/deepspeed_zero2.yaml for DeepSpeed ZeRO-2), PYTHON (default python3 on PATH).
#
# Relative paths (CONFIG, ACCELERATE_CONFIG, data.root and train.run_dir, in the config or
# as overrides) are taken from the folder this is called from, as `python aeatrain/train.py`
# would take them; only the trainer and the default accelerate config come from the checkout.
#
# Exit status: the trainer's (0 finished, 2 a user error, shown as its one line once, 75
# preempted). On CPUs the processes are started by `python -m aeatrain.cpu_launch`
# (torchrun's agent in-process, on a free port) rather than `accelerate launch`, whose
# traceback and exit 1 would follow the trainer's line. With GPUs (or ACCELERATE_CONFIG)
# `accelerate launch` starts them after `train.py --check` has run every check a mistake
# can fail, so a mistake is one line and exit 2 before any process starts.
set -euo pipefail
die() { echo "local.sh: error: $*" >&2; exit 2; }
[ $# -ge 1 ] || die "usage: launch/local.sh CONFIG [--section.key VALUE ...] [--resume]"
CONFIG=$1
shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
[ -f "$CONFIG" ] || die "$CONFIG: no such config"
[[ "${NUM_PROCESSES:-1}" =~ ^[1-9][0-9]*$ ]] ||
    die "NUM_PROCESSES=$NUM_PROCESSES: must be a whole number of at least 1"

GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
if [ "$GPUS" -gt 0 ]; then
    NUM_PROCESSES=${NUM_PROCESSES:-$GPUS}
    LAUNCH=(--config_file "${ACCELERATE_CONFIG:-$REPO/accelerate_config.yaml}")
else
    NUM_PROCESSES=${NUM_PROCESSES:-1}
    LAUNCH=()
    [ -n "${ACCELERATE_CONFIG:-}" ] && LAUNCH=(--config_file "$ACCELERATE_CONFIG")
fi
echo "local.sh: $NUM_PROCESSES process(es) on $([ "$GPUS" -gt 0 ] && echo "$GPUS GPU(s)" || echo CPU)"
TRAIN=("$REPO/aeatrain/train.py" --config "$CONFIG" "$@")
if [ ${#LAUNCH[@]} -eq 0 ]; then  # CPUs: what `accelerate launch --cpu` would set, no launcher
    export ACCELERATE_USE_CPU=true ACCELERATE_MIXED_PRECISION=no ACCELERATE_DYNAMO_BACKEND=NO
    exec "$PYTHON" -m aeatrain.cpu_launch --num_processes "$NUM_PROCESSES" "${TRAIN[@]}"
fi
"$PYTHON" "${TRAIN[@]}" --check --processes "$NUM_PROCESSES" || exit $?
exec "$PYTHON" -m accelerate.commands.launch "${LAUNCH[@]}" --num_processes "$NUM_PROCESSES" "${TRAIN[@]}"
