#!/bin/bash
# Submit self-training as a throttled job array, one task per pair of DATA's manifest.
#
#   launch/slurm/selftrain.sh DATA OUT_ROOT [--max-parallel N] [--config CONFIG] [-- overrides...]
#
# Prints the array job id and the command that gathers the per-pair evaluations into the
# paper's self-training column once the array has finished. Extra sbatch options can be
# given in SBATCH_ARGS (e.g. SBATCH_ARGS="--gpus=1 --time=04:00:00").
set -euo pipefail
die() { echo "selftrain.sh: error: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: launch/slurm/selftrain.sh DATA OUT_ROOT [--max-parallel N] [--config CONFIG] [-- overrides...]"
DATA=$1 OUT_ROOT=$2
shift 2
MAX_PARALLEL=4 CONFIG=configs/selftrain.yaml
while [ $# -gt 0 ]; do
    case $1 in
        --max-parallel) MAX_PARALLEL=$2; shift 2 ;;
        --config) CONFIG=$2; shift 2 ;;
        --) shift; break ;;
        *) die "unknown option $1" ;;
    esac
done
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
[ -f "$CONFIG" ] || die "$CONFIG: no such config"
[ -f "$DATA/manifest.json" ] || die "$DATA/manifest.json: no such file (build the data with python -m data_prep build)"
COUNT=$("$PYTHON" -m data_prep pairs "$DATA" | wc -l)
[ "$COUNT" -ge 1 ] || die "$DATA holds no usable pair"
JOB=$(sbatch --parsable ${SBATCH_ARGS:-} --array="0-$((COUNT - 1))%$MAX_PARALLEL" \
      launch/slurm/selftrain_array.sbatch "$CONFIG" "$DATA" "$OUT_ROOT" "$@")
echo "submitted self-training array $JOB: $COUNT pairs, at most $MAX_PARALLEL at a time"
echo "when it has finished, gather the results with:"
echo "  $PYTHON -m aeatrain.evaluate --data $DATA --selftrain $OUT_ROOT/*/ --out $OUT_ROOT"
