#!/usr/bin/env bash
# The main job on built-in synthetic data, end to end:
#   synthetic SEM pairs -> registered, split WebDataset dataset -> its summary and accuracy.
#
#   bash launch/demo.sh OUTDIR [--overwrite]
#
# Writes OUTDIR/raw (the pairs and truth.json) and OUTDIR/data (the dataset). Refuses an
# OUTDIR that is not empty unless --overwrite is given (then raw/ and data/ are replaced).
# Environment (optional): PYTHON (default python3), PAIRS (22), SEED (0), WIDTH and
# HEIGHT of the image area (1280 x 944, the paper's), WORKERS (default: all cores).
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
WIDTH=${WIDTH:-1280}
HEIGHT=${HEIGHT:-944}
WORKERS_ARG=()
[ -z "${WORKERS:-}" ] || WORKERS_ARG=(--workers "$WORKERS")

echo "== 1/3 synth: $PAIRS synthetic SEM pairs, ${WIDTH}x${HEIGHT}, seed $SEED -> $OUT/raw"
"$PYTHON" -m data_prep synth --out "$OUT/raw" --pairs "$PAIRS" --seed "$SEED" \
    --width "$WIDTH" --height "$HEIGHT" "${WORKERS_ARG[@]}" "${OVERWRITE[@]}"

echo "== 2/3 build: register LR onto HR, paper split, WebDataset shards -> $OUT/data"
"$PYTHON" -m data_prep build --raw "$OUT/raw" --out "$OUT/data" --bar-row "$HEIGHT" \
    "${WORKERS_ARG[@]}" "${OVERWRITE[@]}"

echo "== 3/3 summary of $OUT/data, and registration error against the generator's truth"
"$PYTHON" -m data_prep summary "$OUT/data"
"$PYTHON" -m data_prep check-truth "$OUT/raw" "$OUT/data" | tail -n 1

echo "demo: done. Dataset: $OUT/data (manifest.json, registration.json, qc/*.png, *.tar)"
