# Shared by the aeatrain SLURM job scripts (sourced, not run).
#
# aeatrain_enter_repo          cd into the checkout the job was submitted from
# aeatrain_check ARGS...       validate config + overrides + data + run folder (as a resumed
#                              run), or stop the job (exit 2); writes nothing
# aeatrain_run_preemptible RUN_DIR CMD...
#                              run CMD (usually an srun step) in the background, pass a
#                              preemption signal (USR1/TERM to this script) on to the
#                              training processes, and requeue the job when the trainer
#                              stopped on it (it leaves RUN_DIR/preempted.json).

aeatrain_die() { echo "$(basename "${AEATRAIN_SCRIPT:-aeatrain}"): error: $*" >&2; exit 2; }

aeatrain_enter_repo() {
    PYTHON=${PYTHON:-python3}
    REPO=${AEATRAIN_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
    cd "$REPO" || aeatrain_die "cannot enter the repository folder $REPO"
    [ -f aeatrain/train.py ] || aeatrain_die "$REPO is not an aeatrain checkout (set AEATRAIN_REPO)"
    command -v "$PYTHON" >/dev/null || aeatrain_die "$PYTHON not found (set PYTHON or activate the venv)"
}

aeatrain_check() {
    "$PYTHON" aeatrain/train.py --check --resume "$@" \
        || aeatrain_die "configuration refused (see the line above); nothing was started"
}

aeatrain_forward_preemption() {
    echo "[$(date -Is)] preemption signal: asking the training processes to checkpoint"
    scancel --signal=USR1 "$SLURM_JOB_ID"
}

aeatrain_run_preemptible() {
    local run_dir=$1 pid status
    shift
    rm -f "$run_dir/preempted.json"
    "$@" &
    pid=$!
    trap aeatrain_forward_preemption USR1 TERM
    # `wait` returns early when a trapped signal arrives; keep waiting for the step itself.
    while true; do
        wait "$pid"
        status=$?
        kill -0 "$pid" 2>/dev/null || break
    done
    trap - USR1 TERM
    if [ -f "$run_dir/preempted.json" ]; then
        echo "[$(date -Is)] checkpoint written on preemption; requeueing job $SLURM_JOB_ID"
        if ! scontrol requeue "$SLURM_JOB_ID"; then
            # e.g. SLURM itself is already requeueing a preempted job: nothing is lost,
            # the checkpoint is complete and the next start resumes from it.
            echo "[$(date -Is)] scontrol requeue failed; if the job does not come back," \
                 "submit the same command again: it resumes from the checkpoint" >&2
            exit 75
        fi
        exit 0
    fi
    echo "[$(date -Is)] training ended with status $status"
    exit "$status"
}
