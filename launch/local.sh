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
set -euo pipefail
die() { echo "local.sh: error: $*" >&2; exit 2; }
[ $# -ge 1 ] || die "usage: launch/local.sh CONFIG [--section.key VALUE ...] [--resume]"
CONFIG=$1
shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
[ -f "$CONFIG" ] || die "$CONFIG: no such config"

GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
if [ "$GPUS" -gt 0 ]; then
    NUM_PROCESSES=${NUM_PROCESSES:-$GPUS}
    LAUNCH=(--config_file "${ACCELERATE_CONFIG:-$REPO/accelerate_config.yaml}" --num_processes "$NUM_PROCESSES")
else
    NUM_PROCESSES=${NUM_PROCESSES:-1}
    if [ -n "${ACCELERATE_CONFIG:-}" ]; then
        LAUNCH=(--config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_PROCESSES")
    else
        LAUNCH=(--cpu --num_processes "$NUM_PROCESSES" --num_machines 1 --mixed_precision no
                --dynamo_backend no)
    fi
fi
echo "local.sh: $NUM_PROCESSES process(es) on $([ "$GPUS" -gt 0 ] && echo "$GPUS GPU(s)" || echo CPU)"
exec "$PYTHON" -m accelerate.commands.launch "${LAUNCH[@]}" "$REPO/aeatrain/train.py" --config "$CONFIG" "$@"
