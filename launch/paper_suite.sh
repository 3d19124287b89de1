#!/usr/bin/env bash
# The rows of the paper's Tables 1 and 2 that aeatrain implements, each trained with the
# same budget, evaluated with the paper's protocol and gathered into one table (mean and
# spread over seeds).
#
#   launch/paper_suite.sh DATA OUT [--profile cpu|paper] [--seeds "0 1"] [--rows "ROW ..."]
#                         [--steps N] [--dry-run]
#
# Pooled training (one model on every pair of DATA): unet, gvtnet, aeanet (64 references),
# aeanet_refs32, aeanet_refs16, aeanet_refs_only, aeanet_batch_only, vdsr, edsr, rcan, and
# the non-learning lbnlm (python -m aeatrain.lbnlm: a patch library, no training).
# Self-training (one model per pair, scored on its own pair, averaged over pairs): unet,
# gvtnet, aeanet, vdsr, edsr, rcan, lbnlm.
# --rows runs only the named rows, each <config>-pooled or <config>-self (for instance
# --rows "vdsr-pooled lbnlm-self"); the table gathers every finished row in OUT.
#
# Profiles (the budget is the same for every model of a profile):
#   paper  the shipped configs as they are: 120,000 steps of batch 8, 256x256 crops, the
#          published network. A GPU budget; set TRAIN to your launcher, e.g.
#          TRAIN="accelerate launch --config_file accelerate_config.yaml --num_processes 1"
#   cpu    a CPU-sized budget (default), the recipe whose convergence and seed spread
#          docs/results.md measures (validation curves, 3 seeds): every run 1000 steps
#          of batch 8, 64x64 crops, Adam at 1e-3 after a 50-step linear warm-up, then a
#          cosine decay to 0 at step 1000, gradient clipping 1.0, float32, the residual
#          output (every network predicts the correction to its input; VDSR always does),
#          the raw weights scored (an EMA of decay 0.99 scored no better on average at the
#          end of the cosine: -0.02 to +0.03 dB), a checkpoint every 100 steps, all kept
#          (benchmarks/plot_curves.py draws the validation curves from them). Every
#          network shrinks the same way: half its published width, and a quarter of each
#          published depth (rounded down): U-Net family 16 base channels (its depth is
#          fixed) with BatchNorm momentum 0.1 (needed for a short run to beat bicubic at
#          all); VDSR 32 channels, 5 layers; EDSR 32 channels, 4 blocks; RCAN 32
#          channels, 2 groups of 5 blocks. The references (64/32/16) and branches stay
#          as each config has them.
#          lbnlm is the same in both profiles (it has no training budget).
# --steps N (cpu profile only) stretches the cpu recipe to N steps: the same warm-up, the
#          cosine reaching 0 at step N, a checkpoint every N/10 steps (all 10 kept), the
#          validation at step N; for instance --steps 5000 for 5x the budget.
#
# Runs go to OUT/runs/<config>-<pooled|self>-seed<k>[/<pair>], evaluations to
# OUT/eval/<config>-<pooled|self>-seed<k>/, the gathered table to OUT/results.md. Finished
# runs and evaluations are kept, so the suite continues where it stopped when re-run.
# Environment (optional): PYTHON (python3), TRAIN (the training command; default
# "$PYTHON aeatrain/train.py", one process).
set -euo pipefail
die() { echo "paper_suite.sh: error: $*" >&2; exit 2; }
usage='usage: launch/paper_suite.sh DATA OUT [--profile cpu|paper] [--seeds "0 1"] [--rows "ROW ..."] [--steps N] [--dry-run]'
[ $# -ge 2 ] || die "$usage"
DATA=$(realpath -m "$1") OUT=$(realpath -m "$2")
shift 2
PROFILE=cpu SEEDS="0 1" DRY_RUN=0 ROWS="" STEPS=""
while [ $# -gt 0 ]; do
    case $1 in
        --profile) PROFILE=$2; shift 2 ;;
        --seeds) SEEDS=$2; shift 2 ;;
        --rows) ROWS=$2; shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        *) die "unknown option $1; $usage" ;;
    esac
done
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
read -r -a TRAIN <<< "${TRAIN:-$PYTHON aeatrain/train.py}"
[ -f "$DATA/manifest.json" ] || die "$DATA/manifest.json: no such file (build the data with python -m data_prep build)"

POOLED=(unet gvtnet aeanet aeanet_refs32 aeanet_refs16 aeanet_refs_only aeanet_batch_only
        vdsr edsr rcan lbnlm)
SELF=(unet gvtnet aeanet vdsr edsr rcan lbnlm)
for row in $ROWS; do
    config=${row%-*} kind=${row##*-}
    case $kind in pooled) known=("${POOLED[@]}") ;; self) known=("${SELF[@]}") ;; *) known=() ;; esac
    [[ " ${known[*]} " == *" $config "* ]] || die "--rows: unknown row $row (rows are <config>-pooled or <config>-self)"
done
if [ -n "$STEPS" ]; then
    [ "$PROFILE" = cpu ] || die "--steps: only the cpu profile's budget can be stretched"
    [[ $STEPS =~ ^[1-9][0-9]*0$ ]] || die "--steps $STEPS: expected a positive multiple of 10"
fi
STEPS=${STEPS:-1000}
case $PROFILE in
    paper) BUDGET=() ;;
    cpu) BUDGET=(--train.steps "$STEPS" --data.global_batch_size 8 --data.crop_size 64
                 --optim.lr 1.0e-3 --optim.schedule cosine --optim.warmup_steps 50
                 --optim.grad_clip_norm 1.0 --train.mixed_precision no
                 --train.checkpoint_every $((STEPS / 10)) --train.keep_checkpoints 10
                 --logging.eval_every "$STEPS" --logging.progress_bar false) ;;
    *) die "--profile $PROFILE: expected cpu or paper" ;;
esac
shape() {  # the cpu profile's shrunken network for CONFIG (empty for the paper profile)
    [ "$PROFILE" = cpu ] || return 0
    case $1 in
        vdsr) echo --model.width 32 --model.depth 5 ;;
        edsr) echo --model.width 32 --model.depth 4 --model.residual true ;;
        rcan) echo --model.width 32 --model.groups 2 --model.depth 5 --model.residual true ;;
        *) echo --model.base_channels 16 --model.bn_momentum 0.1 --model.residual true ;;
    esac
}
mapfile -t PAIRS < <("$PYTHON" -m data_prep pairs "$DATA")
[ ${#PAIRS[@]} -ge 1 ] || die "$DATA holds no usable pair"

run() {  # echo a command, run it unless --dry-run
    echo "+ $*"
    [ "$DRY_RUN" = 1 ] || "$@"
}

wanted() {  # wanted ROW: true when --rows is empty or names ROW
    [ -z "$ROWS" ] || [[ " $ROWS " == *" $1 "* ]]
}

train() {  # train RUN_DIR CONFIG SEED [overrides...]: skipped when RUN_DIR holds a finished run
    local run_dir=$1 config=$2 seed=$3
    shift 3
    [ -f "$run_dir/run.json" ] && { echo "= $run_dir: finished, kept"; return; }
    if [ "$config" = lbnlm ]; then  # no training: the library and its settings' search
        run "$PYTHON" -m aeatrain.lbnlm --data "$DATA" --out "$run_dir" --seed "$seed" "$@"
        return
    fi
    local -a model_shape
    read -r -a model_shape <<< "$(shape "$config")"
    run "${TRAIN[@]}" --config "configs/$config.yaml" --resume --data.root "$DATA" \
        --train.run_dir "$run_dir" --train.seed "$seed" "${BUDGET[@]}" "${model_shape[@]}" "$@"
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
        wanted "$config-pooled" || continue
        name=$config-pooled-seed$seed
        train "$OUT/runs/$name" "$config" "$seed"
        evaluate "$OUT/eval/$name" --run "$OUT/runs/$name"
    done
    for config in "${SELF[@]}"; do
        wanted "$config-self" || continue
        name=$config-self-seed$seed
        for pair in "${PAIRS[@]}"; do
            if [ "$config" = lbnlm ]; then restrict=(--pairs "$pair"); else restrict=(--data.pairs "[\"$pair\"]"); fi
            train "$OUT/runs/$name/$pair" "$config" "$seed" "${restrict[@]}"
        done
        evaluate "$OUT/eval/$name" --selftrain "${PAIRS[@]/#/$OUT/runs/$name/}"
    done
done
[ "$DRY_RUN" = 1 ] && exit 0
shopt -s nullglob  # the table gathers every finished evaluation in OUT
for config in "${POOLED[@]}"; do EVALS+=("$OUT/eval/$config-pooled-seed"*); done
for config in "${SELF[@]}"; do EVALS+=("$OUT/eval/$config-self-seed"*); done
mapfile -t EVALS < <(for e in "${EVALS[@]}"; do [ -f "$e/metrics.json" ] && printf '%s\n' "$e"; done)
[ ${#EVALS[@]} -ge 1 ] || die "no finished evaluation in $OUT/eval"
"$PYTHON" -m aeatrain.compare "${EVALS[@]}" --out "$OUT/results.md" --overwrite
echo "paper_suite: profile $PROFILE, seeds $SEEDS, ${#PAIRS[@]} pairs, $(( $(date +%s) - START )) s;" \
     "table in $OUT/results.md"
