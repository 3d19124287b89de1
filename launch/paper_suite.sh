#!/usr/bin/env bash
# The rows of the paper's Tables 1 and 2 that aeatrain implements, each trained with the
# same budget, evaluated with the paper's protocol and gathered into one table (mean and
# spread over seeds).
#
#   launch/paper_suite.sh DATA OUT [--profile cpu|paper] [--seeds "0 1"] [--dry-run]
#
# Pooled training (one model on every pair of DATA): unet, gvtnet, aeanet (64 references),
# aeanet_refs32, aeanet_refs16, aeanet_refs_only, aeanet_batch_only.
# Self-training (one model per pair, scored on its own pair, averaged over pairs): unet,
# gvtnet, aeanet.
#
# Profiles (the budget is the same for every model of a profile):
#   paper  the shipped configs as they are: 120,000 steps of batch 8, 256x256 crops, the
#          published network. A GPU budget; set TRAIN to your launcher, e.g.
#          TRAIN="accelerate launch --config_file accelerate_config.yaml --num_processes 1"
#   cpu    a CPU-sized budget (default): every run 300 steps of batch 8, 64x64 crops,
#          16 base channels, Adam 2e-3 halved at step 150, BatchNorm momentum 0.1 and the
#          residual output (both needed for a short run to beat bicubic at all); the
#          references (64/32/16) and branches stay as each config has them.
#
# Runs go to OUT/runs/<config>-<pooled|self>-seed<k>[/<pair>], evaluations to
# OUT/eval/<config>-<pooled|self>-seed<k>/, the gathered table to OUT/results.md. Finished
# runs and evaluations are kept, so the suite continues where it stopped when re-run.
# Environment (optional): PYTHON (python3), TRAIN (the training command; default
# "$PYTHON aeatrain/train.py", one process).
set -euo pipefail
die() { echo "paper_suite.sh: error: $*" >&2; exit 2; }
usage='usage: launch/paper_suite.sh DATA OUT [--profile cpu|paper] [--seeds "0 1"] [--dry-run]'
[ $# -ge 2 ] || die "$usage"
DATA=$(realpath -m "$1") OUT=$(realpath -m "$2")
shift 2
PROFILE=cpu SEEDS="0 1" DRY_RUN=0
while [ $# -gt 0 ]; do
    case $1 in
        --profile) PROFILE=$2; shift 2 ;;
        --seeds) SEEDS=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        *) die "unknown option $1; $usage" ;;
    esac
done
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
read -r -a TRAIN <<< "${TRAIN:-$PYTHON aeatrain/train.py}"
[ -f "$DATA/manifest.json" ] || die "$DATA/manifest.json: no such file (build the data with python -m data_prep build)"

POOLED=(unet gvtnet aeanet aeanet_refs32 aeanet_refs16 aeanet_refs_only aeanet_batch_only)
SELF=(unet gvtnet aeanet)
case $PROFILE in
    paper) BUDGET=() ;;
    cpu) BUDGET=(--train.steps 300 --data.global_batch_size 8 --data.crop_size 64
                 --model.base_channels 16 --optim.lr 2.0e-3 --optim.lr_decay_every 150
                 --optim.grad_clip_norm 1.0 --model.bn_momentum 0.1 --model.residual true
                 --train.mixed_precision no --train.checkpoint_every 300
                 --logging.eval_every 300 --logging.progress_bar false) ;;
    *) die "--profile $PROFILE: expected cpu or paper" ;;
esac
mapfile -t PAIRS < <("$PYTHON" -m data_prep pairs "$DATA")
[ ${#PAIRS[@]} -ge 1 ] || die "$DATA holds no usable pair"

run() {  # echo a command, run it unless --dry-run
    echo "+ $*"
    [ "$DRY_RUN" = 1 ] || "$@"
}

train() {  # train RUN_DIR CONFIG SEED [overrides...]: skipped when RUN_DIR holds a finished run
    local run_dir=$1 config=configs/$2.yaml seed=$3
    shift 3
    [ -f "$run_dir/run.json" ] && { echo "= $run_dir: finished, kept"; return; }
    run "${TRAIN[@]}" --config "$config" --resume --data.root "$DATA" --train.run_dir "$run_dir" \
        --train.seed "$seed" "${BUDGET[@]}" "$@"
}

evaluate() {  # evaluate EVAL_DIR ARGS...: skipped when EVAL_DIR holds its metrics
    local eval_dir=$1
    shift
    [ -f "$eval_dir/metrics.json" ] && { echo "= $eval_dir: evaluated, kept"; return; }
    run "$PYTHON" -m aeatrain.evaluate --data "$DATA" --out "$eval_dir" "$@"
}

START=$(date +%s)
EVALS=()
for seed in $SEEDS; do
    for config in "${POOLED[@]}"; do
        name=$config-pooled-seed$seed
        train "$OUT/runs/$name" "$config" "$seed"
        evaluate "$OUT/eval/$name" --run "$OUT/runs/$name"
    done
    for config in "${SELF[@]}"; do
        name=$config-self-seed$seed
        for pair in "${PAIRS[@]}"; do
            train "$OUT/runs/$name/$pair" "$config" "$seed" --data.pairs "[\"$pair\"]"
        done
        evaluate "$OUT/eval/$name" --selftrain "${PAIRS[@]/#/$OUT/runs/$name/}"
    done
done
for config in "${POOLED[@]}"; do EVALS+=("$OUT/eval/$config-pooled-seed"*); done
for config in "${SELF[@]}"; do EVALS+=("$OUT/eval/$config-self-seed"*); done
[ "$DRY_RUN" = 1 ] && exit 0
"$PYTHON" -m aeatrain.compare "${EVALS[@]}" --out "$OUT/results.md"
echo "paper_suite: profile $PROFILE, seeds $SEEDS, ${#PAIRS[@]} pairs, $(( $(date +%s) - START )) s;" \
     "table in $OUT/results.md"
