#!/bin/bash
# The paper's comparison on one GPU, in one command of at most 9 minutes, setup included:
#
#   launch/gpu_compare.sh OUT [--bench BENCH_JSON] [--setting S] [--minutes M] [--lr LR]
#   launch/gpu_compare.sh OUT --smoke        # the same, end to end, tiny, on the CPU
#
# 1. The environment: launch/gpu_setup.sh, offline, as gpu_check.sh makes it (GPU_VENV,
#    default .venv-gpu; GPU_WHEELS, default .gpu-wheels; PYTHON, default python3).
# 2. The data, made on all the machine's cores: python -m data_prep synth-mix (16 pairs of
#    1280 x 944, 4 of each of 4 specimen families, each family under its own acquisition
#    settings over the realistic preset: docs/data_prep.md) and build --pairs-file; one
#    pooled set, the same for every model.
# 3. The plan, printed before any training: each model's step time at the paper's shape,
#    from BENCH_JSON (the bench_gpu.json of gpu_check.sh) or else from a warm-up of
#    benchmarks/bench_gpu.py (--shapes paper --steps-only, in S, or eager bf16 for
#    fastest); compilation time from the same row (its warm-up seconds). What is left of M minutes (default 9) after
#    the time spent so far, the evaluations and the table is shared equally between the
#    models; each trains for the steps that fit its share. U-Net, GVTNet and AEANet always;
#    AEANet references-only and batch-aware-only too when each of the five still gets
#    2000 steps (their step time is taken as AEANet's, an upper bound). Exit 1 before any
#    training when a model would get fewer than 200 steps. A training run still going 60 s
#    past its share is stopped (a failed stage; the others go on).
# 4. Training, pooled, one process, seed 0: the shipped configs' networks at the paper's
#    batch (8 random 256 x 256 crops) with the L1 loss and Adam, trained with the cpu
#    profile of launch/paper_suite.sh otherwise (docs/results.md): Adam at LR (default
#    1e-3) after a 50-step linear warm-up, cosine decay to 0 at the planned step, gradient
#    clipping 1.0, BatchNorm momentum 0.1, residual output. Setting S: float32, bf16,
#    bf16+channels_last, bf16+compile (train.compile, inductor) or fastest (default): of
#    those the step times give for all three models, less any whose loss curve
#    bench_gpu.py found off float32's, the one whose plan trains the least trained model
#    the most steps.
# 5. python -m aeatrain.evaluate of each run (the paper's protocol) and
#    python -m aeatrain.compare of them all.
# OUT (new or empty) receives DATA/, runs/<model>/, eval/<model>-pooled-seed0/,
# results.md (the table), gpu_compare.json (card, plan, recipe, every stage's seconds and
# exit status, every model's steps, training seconds and scores) and gpu_compare.log.
# Exit 0 when every stage passed, 1 when one failed (the JSON says which), 2 (one line)
# for bad arguments or a machine without CUDA.
# --smoke: the CPU, float32, tiny data (one 256 x 192 pair per family, one process), tiny
# networks (8 base channels, 8 references), batch 4 of 32 x 32, at most 3 steps per
# model: a rehearsal of every stage (tests/launch/test_gpu_compare.py), no figure worth
# reading.
set -uo pipefail
die() { echo "gpu_compare.sh: error: $*" >&2; exit 2; }
usage="usage: launch/gpu_compare.sh OUT [--bench BENCH_JSON] [--setting S] [--minutes M] [--lr LR] [--smoke]"
[ $# -ge 1 ] && [[ $1 != -* ]] || die "$usage"
OUT=$(realpath -m -- "$1")
shift
SMOKE=0 BENCH="" SETTING="" MINUTES=9 LR=1.0e-3
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) SMOKE=1; shift ;;
        --bench) [ $# -ge 2 ] || die "$usage"; BENCH=$(realpath -m -- "$2"); shift 2 ;;
        --setting) [ $# -ge 2 ] || die "$usage"; SETTING=$2; shift 2 ;;
        --minutes) [ $# -ge 2 ] || die "$usage"; MINUTES=$2; shift 2 ;;
        --lr) [ $# -ge 2 ] || die "$usage"; LR=$2; shift 2 ;;
        *) die "unknown option $1; $usage" ;;
    esac
done
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=$(realpath -m -- "${GPU_VENV:-.venv-gpu}") WHEELS=$(realpath -m -- "${GPU_WHEELS:-.gpu-wheels}")
[ -n "$SETTING" ] || SETTING=$([ $SMOKE = 1 ] && echo float32 || echo fastest)
setting_args() {  # the trainer's options for setting $1
    case $1 in
        float32) echo --train.mixed_precision no ;;
        bf16) echo --train.mixed_precision bf16 ;;
        bf16+channels_last) echo --train.mixed_precision bf16 --train.channels_last true ;;
        bf16+compile) echo --train.mixed_precision bf16 --train.compile true ;;
        *) return 1 ;;
    esac
}
[ "$SETTING" = fastest ] || setting_args "$SETTING" >/dev/null \
    || die "--setting $SETTING: expected fastest, float32, bf16, bf16+channels_last or bf16+compile"
[[ $MINUTES =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--minutes $MINUTES: expected a number of minutes"
[[ $LR =~ ^[0-9.]+(e-?[0-9]+)?$ ]] || die "--lr $LR: expected a positive number"
[ -z "$BENCH" ] || [ -f "$BENCH" ] || die "--bench $BENCH: no such file"
if [ -e "$OUT" ] && { [ ! -d "$OUT" ] || [ -n "$(ls -A "$OUT")" ]; }; then
    die "$OUT: exists and is not an empty folder"
fi
if [ $SMOKE = 1 ]; then
    CARD="none (--smoke, CPU)" DEVICE=cpu SETUP_FLAGS=()
else
    CARD=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
    [ -n "$CARD" ] || die "no CUDA GPU on this machine (nvidia-smi finds none; --smoke runs on the CPU)"
    DEVICE=cuda SETUP_FLAGS=(--require-cuda)
fi
mkdir -p "$OUT" || die "$OUT: cannot create it"
exec > >(tee -a "$OUT/gpu_compare.log") 2>&1
echo "gpu_compare.sh: $CARD; setting $SETTING; $MINUTES minutes; output in $OUT"
CORES=$([ $SMOKE = 1 ] && echo 1 || nproc)  # --smoke: 4 tiny pairs, no worker processes to start
STAGES=()  # name:exit status:seconds
stage() {  # stage NAME COMMAND...: run it, note its status and seconds
    local name=$1 start=$SECONDS rc
    shift
    echo "== $name"
    "$@"
    rc=$?
    STAGES+=("$name:$rc:$((SECONDS - start))")
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    return $rc
}
report() {  # gpu_compare.json from the plan, the stages and the evaluations; then exit
    "${REPORT_PYTHON:-$PYTHON}" - "$OUT" "$CARD" "$SETTING" "$LR" "$SECONDS" "${STAGES[@]}" <<'EOF'
"""Gather the plan, the stages and every evaluation's scores into one JSON."""
import json
import sys
from pathlib import Path

from aeatrain.protocol.metrics import read_metrics

out, card, setting, lr, seconds, stages = Path(sys.argv[1]), *sys.argv[2:6], sys.argv[6:]
report = {"card": card, "setting": setting, "lr": float(lr), "wall_seconds": int(seconds),
          "stages": {}, "plan": None, "models": {}}  # fmt: skip
for item in stages:
    name, status, took = item.rsplit(":", 2)
    report["stages"][name] = {"exit": int(status), "seconds": int(took)}
if (out / "plan.json").is_file():
    report["plan"] = json.loads((out / "plan.json").read_text())
    for model, planned in report["plan"]["models"].items():
        row = {"steps": planned["steps"], "train": report["stages"].get(f"train {model}")}
        metrics = out / "eval" / f"{model}-pooled-seed0" / "metrics.json"
        if metrics.is_file():
            row["summary"] = read_metrics(metrics).rows[0].summary
        report["models"][model] = row
partial = out / ".gpu_compare.json.partial"  # renamed whole: never a half-written JSON
partial.write_text(json.dumps(report, indent=1) + "\n")
partial.replace(out / "gpu_compare.json")
print(f"gpu_compare.sh: wrote {out / 'gpu_compare.json'} after {seconds} s")
EOF
    for item in "${STAGES[@]}"; do
        [ "$(echo "$item" | cut -d: -f2)" = 0 ] || exit 1
    done
    exit 0
}

stage setup env PYTHON="$PYTHON" launch/gpu_setup.sh "$VENV" "$WHEELS" "${SETUP_FLAGS[@]}" || report
RUN=("$VENV/bin/python")
REPORT_PYTHON=$VENV/bin/python
if [ $SMOKE = 1 ]; then
    SIZE=(--pairs-per-family 1 --width 256 --height 192 --bar-rows 0) BUILD_BAR=(--no-bar)
else
    SIZE=(--pairs-per-family 4 --width 1280 --height 944 --bar-rows 80) BUILD_BAR=(--bar-row 944)
fi
make_data() {
    "${RUN[@]}" -m data_prep synth-mix --out "$OUT/RAW" --seed 0 --workers "$CORES" "${SIZE[@]}" \
        && "${RUN[@]}" -m data_prep build --raw "$OUT/RAW" --pairs-file "$OUT/RAW/pairs.csv" \
            --out "$OUT/DATA" --workers "$CORES" "${BUILD_BAR[@]}"
}
stage data make_data || report
STEP_TIMES=$BENCH
if [ -z "$STEP_TIMES" ]; then
    STEP_TIMES=$OUT/warmup.json
    QUICK=(); [ $SMOKE = 1 ] && QUICK=(--quick --loader-workers 1)
    stage warmup "${RUN[@]}" benchmarks/bench_gpu.py --device "$DEVICE" "${QUICK[@]}" \
        --out "$STEP_TIMES" --shapes paper --steps-only --steps 5 \
        --settings "$([ "$SETTING" = fastest ] && echo bf16 || echo "$SETTING")" \
        --warmup 2 || report
fi
stage plan "${RUN[@]}" - "$STEP_TIMES" "$SETTING" "$MINUTES" "$SECONDS" "$SMOKE" "$OUT/plan.json" <<'EOF' || report
"""Steps per model so that each trains for the same wall time and all of it fits."""
import json
import math
import sys
from pathlib import Path

bench, setting, minutes, elapsed, smoke, out = sys.argv[1:]
STARTUP_SECONDS = 25  # per training process: imports, data, the final validation, checkpoint
EVAL_SECONDS = 30  # per evaluation: startup and 16 whole images (48 test tiles) on the GPU
FINAL_SECONDS = 15  # compare and the report
MIN_STEPS, ABLATION_MIN_STEPS, SMOKE_STEPS = 200, 2000, 3
STEPPED = ("unet", "gvtnet", "aeanet", "aeanet_refs_only", "aeanet_batch_only")
MEASURED = {"aeanet_refs_only": "aeanet", "aeanet_batch_only": "aeanet"}  # an upper bound
TRAINABLE = ("float32", "bf16", "bf16+channels_last", "bf16+compile")  # train.py's settings
report = json.loads(Path(bench).read_text())
rows = {(r["model"], r["setting"]): r for r in report["steps"]
        if r["shape"] == "paper" and "error" not in r}  # fmt: skip
off_curve = {c["candidate"] for c in report.get("loss_curves", {}).values()
             if not c["keeps_float32_curve"]}  # fmt: skip


def plan(setting, models):
    """(seconds per model, {model: steps}, {model: (step s, compile s)}) for ``setting``."""
    times = {}
    for model in models:
        row = rows[(MEASURED.get(model, model), setting)]
        times[model] = (row["step_seconds"], row["warmup_seconds"] if "compile" in setting else 0.0)
    left = 60 * float(minutes) - float(elapsed) - len(models) * EVAL_SECONDS - FINAL_SECONDS
    share = left / len(models)
    steps = {m: math.floor((share - STARTUP_SECONDS - c) / s) for m, (s, c) in times.items()}
    return share, steps, times


def best(setting):
    """The plan of ``setting``: five models when each still gets enough steps, else three."""
    share, steps, times = plan(setting, STEPPED)
    if min(steps.values()) < ABLATION_MIN_STEPS:
        share, steps, times = plan(setting, STEPPED[:3])
    return share, steps, times


candidates = [setting] if setting != "fastest" else [
    s for s in TRAINABLE if s not in off_curve and all((m, s) in rows for m in STEPPED[:3])]
if not candidates or any((m, s) not in rows for m in STEPPED[:3] for s in candidates):
    sys.exit(f"gpu_compare.sh: {bench}: no step time of unet, gvtnet and aeanet at the paper's "
             f"shape in {setting}")  # fmt: skip
plans = {s: best(s) for s in candidates}  # the fastest: the most steps for the least trained
setting = max(plans, key=lambda s: (min(plans[s][1].values()), len(plans[s][1])))
share, steps, times = plans[setting]
models = list(steps)
fits = min(steps.values()) >= MIN_STEPS or smoke == "1"
if smoke == "1":
    steps = {m: min(max(1, n), SMOKE_STEPS) for m, n in steps.items()}
print(f"plan: {len(models)} models, {share:.0f} s of the {minutes} minutes each "
      f"({float(elapsed):.0f} s spent; {EVAL_SECONDS} s per evaluation, {FINAL_SECONDS} s for "
      f"the table kept), setting {setting} (of {', '.join(candidates)}), step times from {bench}")  # fmt: skip
for m in models:
    print(f"  {m:18} {times[m][0]:.4f} s/step, {times[m][1]:.0f} s compiling, "
          f"{STARTUP_SECONDS} s start-up: {steps[m]} steps")  # fmt: skip
plan = {"models": {m: {"steps": steps[m], "step_seconds": times[m][0],
                       "compile_seconds": times[m][1]} for m in models},
        "seconds_per_model": share, "minutes": float(minutes), "setting": setting,
        "step_times_from": bench, "fits": fits}  # fmt: skip
Path(out).write_text(json.dumps(plan, indent=1) + "\n")
if not fits:
    sys.exit(f"gpu_compare.sh: the plan does not fit {minutes} minutes: a model would get fewer "
             f"than {MIN_STEPS} steps")  # fmt: skip
EOF
mapfile -t PLAN < <("${RUN[@]}" -c 'import json, sys
plan = json.load(open(sys.argv[1]))
print(plan["setting"], max(round(plan["seconds_per_model"]), 60) + 60)
for model, p in plan["models"].items(): print(model, p["steps"])' "$OUT/plan.json")
read -r SETTING TRAIN_LIMIT <<< "${PLAN[0]}"  # a run past its share + 60 s is stopped
read -r -a SETTING_ARGS <<< "$(setting_args "$SETTING")"

if [ $SMOKE = 1 ]; then
    SHAPE=(--data.crop_size 32 --data.global_batch_size 4 --model.base_channels 8
           --data.num_workers 0 --logging.image_tiles 1 --logging.heatmap_refs 2)
else
    SHAPE=(--data.crop_size 256 --data.global_batch_size 8 --data.num_workers 4)
fi
EVALS=()
for line in "${PLAN[@]:1}"; do
    read -r model steps <<< "$line"
    refs=()
    [ $SMOKE = 1 ] && [ "$model" != unet ] && [ "$model" != gvtnet ] \
        && [ "$model" != aeanet_batch_only ] && refs=(--model.num_refs 8)
    stage "train $model" timeout --kill-after=10 "$TRAIN_LIMIT" "${RUN[@]}" aeatrain/train.py \
        --config "configs/$model.yaml" \
        --data.root "$OUT/DATA" --train.run_dir "$OUT/runs/$model" --train.seed 0 \
        --train.steps "$steps" --optim.loss l1 --optim.lr "$LR" --optim.schedule cosine \
        --optim.warmup_steps $((steps < 500 ? steps / 10 : 50)) --optim.grad_clip_norm 1.0 \
        --model.bn_momentum 0.1 --model.residual true "${SHAPE[@]}" "${refs[@]}" \
        "${SETTING_ARGS[@]}" --train.checkpoint_every "$steps" --train.keep_checkpoints 1 \
        --logging.eval_every "$steps" --logging.progress_bar false || continue
    stage "evaluate $model" "${RUN[@]}" -m aeatrain.evaluate --run "$OUT/runs/$model" \
        --data "$OUT/DATA" --device "$DEVICE" --out "$OUT/eval/$model-pooled-seed0" \
        && EVALS+=("$OUT/eval/$model-pooled-seed0")
done
[ ${#EVALS[@]} -ge 1 ] && stage table "${RUN[@]}" -m aeatrain.compare "${EVALS[@]}" --out "$OUT/results.md"
report
