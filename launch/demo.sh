#!/usr/bin/env bash
# The main job on built-in synthetic data, end to end:
#   synthetic SEM pairs -> registered, split WebDataset dataset -> training (2 CPU
#   processes, the batch-aware attention spanning both) -> evaluation with the paper's
#   protocol (the results table) -> super-resolution of one new LR image.
#
#   bash launch/demo.sh OUTDIR [--overwrite]
#
# Writes OUTDIR/raw (the pairs and truth.json), OUTDIR/data (the dataset), OUTDIR/run
# (the trained model, checkpoints, TensorBoard logs), OUTDIR/eval (metrics.md/json) and
# OUTDIR/predict (the super-resolved image). Refuses an OUTDIR that is not empty unless
# --overwrite is given (then those five folders are replaced, each only when an earlier
# run wrote it: a folder of those names holding anything else is refused).
# Environment (optional): PYTHON (default python3), PAIRS (22), SEED (0), WIDTH and
# HEIGHT of the image area (1280 x 944, the paper's), WORKERS (default: all cores),
# NUM_PROCESSES (training processes, 2), CONFIG (configs/demo.yaml), FORMAT of the
# synthetic files (bmp; fei-tif: 16-bit TIFFs with FEI metadata, so the pixel size
# travels through build and predict writes a calibrated TIFF), PRESET of the synthetic
# pairs (default; realistic: statistics of real SEM tiles, docs/data_prep.md).
set -euo pipefail
die() { echo "demo.sh: error: $*" >&2; exit 2; }
usage="usage: launch/demo.sh OUTDIR [--overwrite]"
[ $# -ge 1 ] && [ $# -le 2 ] || die "$usage"
OVERWRITE=()
if [ $# -eq 2 ]; then
    [ "$2" = "--overwrite" ] || die "$usage"
    OVERWRITE=(--overwrite)
fi
OUT=$(realpath -m "$1")
[ ! -e "$OUT" ] || [ -d "$OUT" ] || die "$OUT: exists and is not a folder"
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ${#OVERWRITE[@]} -eq 0 ]; then
    die "$OUT: not empty (choose a new folder, or give --overwrite to replace its raw/ and data/)"
fi
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PAIRS=${PAIRS:-22}
SEED=${SEED:-0}
FORMAT=${FORMAT:-bmp}
PRESET=${PRESET:-default}
WIDTH=${WIDTH:-1280}
HEIGHT=${HEIGHT:-944}
WORKERS_ARG=()
[ -z "${WORKERS:-}" ] || WORKERS_ARG=(--workers "$WORKERS")

NUM_PROCESSES=${NUM_PROCESSES:-2}
CONFIG=${CONFIG:-configs/demo.yaml}
[ -f "$CONFIG" ] || die "$CONFIG: no such config"
if [ ${#OVERWRITE[@]} -gt 0 ]; then  # only folders an earlier demo wrote (aeatrain.files.outputs)
    "$PYTHON" - "$OUT" <<'PY' || exit 2
import sys
from pathlib import Path

from aeatrain.errors import run_cli
from aeatrain.files.outputs import METRICS, OUTPUTS, check_replaceable_folder
from aeatrain.run import RUN



def main():
    for name, marker in {"run": RUN, "eval": METRICS, "predict": OUTPUTS}.items():
        check_replaceable_folder(Path(sys.argv[1], name), marker, overwrite=True)


run_cli(main)
PY
    rm -rf "$OUT/run" "$OUT/eval" "$OUT/predict"
fi
START=$(date +%s)

echo "== 1/6 synth: $PAIRS synthetic SEM pairs ($PRESET preset), ${WIDTH}x${HEIGHT}, seed $SEED -> $OUT/raw"
"$PYTHON" -m data_prep synth --out "$OUT/raw" --pairs "$PAIRS" --seed "$SEED" \
    --width "$WIDTH" --height "$HEIGHT" --format "$FORMAT" --preset "$PRESET" \
    "${WORKERS_ARG[@]}" "${OVERWRITE[@]}"

echo "== 2/6 build: register LR onto HR, paper split, WebDataset shards -> $OUT/data"
"$PYTHON" -m data_prep build --raw "$OUT/raw" --out "$OUT/data" --bar-row "$HEIGHT" \
    "${WORKERS_ARG[@]}" "${OVERWRITE[@]}"

echo "== 3/6 summary of $OUT/data, and registration error against the generator's truth"
"$PYTHON" -m data_prep summary "$OUT/data"
"$PYTHON" -m data_prep check-truth "$OUT/raw" "$OUT/data" | tail -n 1

echo "== 4/6 train: $CONFIG on $NUM_PROCESSES CPU processes -> $OUT/run"
OMP_NUM_THREADS=1 "$PYTHON" -m accelerate.commands.launch --cpu --num_processes "$NUM_PROCESSES" \
    --num_machines 1 --mixed_precision no --dynamo_backend no \
    aeatrain/train.py --config "$CONFIG" --data.root "$OUT/data" --train.run_dir "$OUT/run" \
    --logging.progress_bar false

echo "== 5/6 evaluate with the paper's protocol (whole images, test tiles) -> $OUT/eval"
"$PYTHON" -m aeatrain.evaluate --run "$OUT/run" --data "$OUT/data" --out "$OUT/eval"

LR_IMAGE=$(ls "$OUT/raw"/*_10000.* | head -n 1)
echo "== 6/6 predict: super-resolve $LR_IMAGE (data bar cut) -> $OUT/predict"
"$PYTHON" -m aeatrain.predict --run "$OUT/run" --input "$LR_IMAGE" --output "$OUT/predict" \
    --bar-row "$HEIGHT"

echo
echo "demo: done in $(( $(date +%s) - START )) s."
echo "  dataset:   $OUT/data (manifest.json, registration.json, qc/*.png, *.tar)"
echo "  model:     $OUT/run (model.safetensors, config.yaml, checkpoints/)"
echo "  results:   $OUT/eval/metrics.md"
echo "  predicted: $(ls "$OUT/predict/$(basename "${LR_IMAGE%.*}")".* | head -n 1)"
echo "  TensorBoard: tensorboard --logdir $OUT/run/logs"
