#!/usr/bin/env bash
# The one command for a GPU session (the device tool's `run`; docs/development.md, "Using a GPU session").
#
#   bash scripts/gpu/device_run.sh [--dry-run] JOB
#
# JOB:
#   all                 bench, then train-cpu (the default plan for a session: one call of ~9 minutes)
#   train-cpu           `cpu` config: train (time-limited, --resume), refit-heads, eval trained + refit + shipped
#   train-cpu-continue  as train-cpu, starting with --init-from device-carry/init.pt (a slim checkpoint
#                       brought back by an earlier session, or made here: cmah checkpoint slim)
#   train-paper         `paper` config: train, eval (its weights, 219 MB, are too big to come back)
#   bench               bench/encode.py, bench/cuda_graphs.py (+ its tests), bench/search_gpu.py on CUDA, eval
#                       of the shipped weights
#   eval                eval of the shipped weights (or CMAH_EVAL_WEIGHTS=DIR)
#
# It dequantises the carried data (device-carry/modelnet40_train_q8.npz, cmah data quantize / restore)
# into a temporary folder, runs the job's steps, each under a wall-clock limit so that the whole command
# ends by CMAH_DEADLINE_S (default 540 s: 60 s inside the tool's 600 s), and leaves in $OUT (at most 8
# files, each at most 16 MiB):
#   device_run.log        everything printed (written as it goes: it comes back even if the call is cut)
#   summary.txt           mAP table (shipped / trained / refit), training and benchmark headlines
#   results.tar.gz        eval-*.json, train_log.json, loss_curve.png, bench-*.json/.md, env.txt
#   weights-trained.tar   the trained weights directory (fp16), as weights-trained/
#   weights-refit.tar     the refit-heads weights directory, as weights-refit/
#   checkpoint-slim.pt    the model of the run's checkpoint in fp16 (for --init-from next session)
# A file over 16 MiB is not returned and the log says so. Steps after a failed step that do not need
# its result still run; the exit status is 1 if any step failed, 2 for a bad set-up (no CUDA, no data).
#
# --dry-run (or CMAH_DEVICE_DRY_RUN=1): the same pipeline on the CPU, `tiny` config, a few steps, a
# subset of the data, small benchmarks, with the GPU machine's missing packages (FAISS, pydantic,
# FastAPI...) made unimportable (scripts/gpu/device_sim): check it here before spending device time:
#   OUT=/tmp/dry OMP_NUM_THREADS=1 PYTHON=.venv/bin/python nice -n 10 bash scripts/gpu/device_run.sh --dry-run all
#
# Settings (environment):
#   OUT                  results folder (the device tool sets it; required)
#   PYTHON               interpreter (default python3: the GPU machine's, with torch)
#   CMAH_DEADLINE_S      seconds from start by which the command ends (default 540)
#   CMAH_TRAIN_MIN       cap on the training minutes (default: what the deadline leaves after the later steps)
#   CMAH_BUDGET_MIN      cosine schedule length in minutes (--time-budget-min; default: this call's training
#                        minutes; set it to the chain's total when a second call will --resume the run)
#   CMAH_TRAIN_ARGS      more `cmah train` arguments, e.g. "--batch-size 256 --lr 6e-4" or "--compile"
#   CMAH_INIT_FROM       --init-from for a fresh run (checkpoint or weights dir, e.g. "weights" = shipped encoders)
#   CMAH_RUN_DIR         run directory (default runs/device-<config>; it survives between calls while the
#                        machine stays warm, and --resume continues it)
#   CMAH_DATA_Q          quantised data (default device-carry/modelnet40_train_q8.npz)
#   CMAH_REFIT           1/0: run refit-heads after training (default 1 for cpu, 0 for paper)
#   CMAH_POST_RESERVE_S  seconds kept for the steps after training (default: job's estimate)
#   CMAH_DRY_SHAPES      dry run: shapes of the data subset (default 240)
#   CMAH_BENCHES         which benchmarks the bench / all jobs run (default "encode graphs search"; graphs:
#                        tests/model/test_cuda_graphs.py, then bench/cuda_graphs.py, eager vs CUDA graphs)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

say() { echo "[device_run $(date +%H:%M:%S) +${SECONDS}s] $*" >&2; }
ERR=""
die() { ERR="$*"; echo "[device_run] ERROR: $*" >&2; exit 2; }

DRY=${CMAH_DEVICE_DRY_RUN:-0}
JOB=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $arg (see --help)" ;;
        *) [[ -z $JOB ]] || die "one JOB only (got '$JOB' and '$arg')"; JOB=$arg ;;
    esac
done
[[ -n $JOB ]] || die "no JOB given: all | train-cpu | train-cpu-continue | train-paper | bench | eval (see --help)"
case "$JOB" in all|train-cpu|train-cpu-continue|train-paper|bench|eval) ;; *) die "unknown JOB '$JOB' (see --help)" ;; esac
[[ -n ${OUT:-} ]] || die "OUT is not set: the device tool sets it; here, e.g. OUT=/tmp/dry bash scripts/gpu/device_run.sh --dry-run $JOB"
mkdir -p "$OUT"
[[ -w $OUT ]] || die "OUT=$OUT is not writable"

exec > >(tee -a "$OUT/device_run.log") 2>&1
TEE_PID=$!

PY=${PYTHON:-python3}
DEADLINE=${CMAH_DEADLINE_S:-540}
DATA_Q=${CMAH_DATA_Q:-device-carry/modelnet40_train_q8.npz}
MAX_RETURN=$((16 * 1024 * 1024))
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cmah-device-run.XXXXXX")
RES=$WORK/results          # what goes into results.tar.gz
mkdir -p "$RES"

# --- what the job does ------------------------------------------------------------------------------
BENCH=0; CONFIG=""; EVAL_SHIPPED=1; INIT=${CMAH_INIT_FROM:-}
case "$JOB" in
    all) BENCH=1; CONFIG=cpu ;;
    train-cpu) CONFIG=cpu ;;
    train-cpu-continue) CONFIG=cpu; INIT=${CMAH_INIT_FROM:-device-carry/init.pt} ;;
    train-paper) CONFIG=paper; EVAL_SHIPPED=0 ;;
    bench) BENCH=1 ;;
    eval) ;;
esac
REFIT=${CMAH_REFIT:-$([[ $CONFIG == cpu ]] && echo 1 || echo 0)}
if [[ $DRY == 1 ]]; then
    DEV=cpu
    TRAIN_CONFIG=tiny
    export PYTHONPATH="$ROOT/scripts/gpu/device_sim:$PYTHONPATH"   # FAISS, pydantic, FastAPI... unimportable
    export CMAH_THREADS=${CMAH_THREADS:-1}
    RUN=${CMAH_RUN_DIR:-$WORK/run-tiny}
    POST_RESERVE=${CMAH_POST_RESERVE_S:-150}
else
    DEV=cuda
    TRAIN_CONFIG=$CONFIG
    RUN=${CMAH_RUN_DIR:-runs/device-$CONFIG}
    # after training: refit (~45 s), eval of the refit and the trained weights (~40 s each), packing;
    # estimates (docs/development.md). The shipped weights' eval runs last, in what is left.
    POST_RESERVE=${CMAH_POST_RESERVE_S:-$(( 30 + 45 * REFIT + 40 * (1 + REFIT) ))}
fi
EVAL_WEIGHTS=${CMAH_EVAL_WEIGHTS:-weights}
BENCHES=${CMAH_BENCHES:-encode graphs search}

FAILED=()
SKIPPED=()

# step NAME CAP_S CMD...: run CMD with a wall-clock limit of min(CAP_S, time left before the deadline - 10 s)
step() {
    local name=$1 cap=$2; shift 2
    local left=$(( DEADLINE - SECONDS ))
    local limit=$(( cap < left - 10 ? cap : left - 10 ))
    if (( limit < 10 )); then
        say "SKIPPED $name: ${left}s left before the ${DEADLINE}s deadline"
        SKIPPED+=("$name")
        return 1
    fi
    say ">>> $name (limit ${limit}s; ${left}s left): $*"
    local t0=$SECONDS rc=0
    timeout -k 15 "$limit" "$@" || rc=$?
    if (( rc != 0 )); then
        local why="exit status $rc"
        (( rc == 124 || rc == 137 )) && why="stopped at its ${limit}s limit"
        say "FAILED $name: $why"
        FAILED+=("$name ($why)")
        return 1
    fi
    say "<<< $name done in $(( SECONDS - t0 ))s"
}

# put FILE NAME: copy FILE to $OUT/NAME when it is small enough to come back
put() {
    [[ -f $1 ]] || return 0
    local size
    size=$(stat -c %s "$1")
    if (( size > MAX_RETURN )); then
        say "NOT RETURNED: $2 is $(( size / 1048576 )) MiB, over the 16 MiB a returned file may have"
        rm -f "$OUT/$2"
        return 0
    fi
    cp "$1" "$OUT/$2.tmp" && mv "$OUT/$2.tmp" "$OUT/$2"
}

# pack: (re)write the returned files from what exists so far (called after each step and at exit)
pack() {
    local f w
    if [[ -n $CONFIG ]]; then
        for f in train_log.json loss_curve.png; do
            if [[ -f $RUN/$f ]]; then cp "$RUN/$f" "$RES/$f"; fi
        done
    fi
    tar -czf "$WORK/results.tar.gz" -C "$WORK" results && put "$WORK/results.tar.gz" results.tar.gz
    for w in weights:weights-trained weights-refit:weights-refit; do
        local src=$RUN/${w%%:*} name=${w##*:}
        if [[ -n $CONFIG && -f $src/manifest.json && $src/manifest.json -nt $WORK/.packed-$name ]]; then
            rm -rf "${WORK:?}/pack" && mkdir -p "$WORK/pack" && cp -r "$src" "$WORK/pack/$name"
            tar -cf "$WORK/$name.tar" -C "$WORK/pack" "$name" && put "$WORK/$name.tar" "$name.tar"
            touch "$WORK/.packed-$name"
        fi
    done
}

finish() {
    local rc=$?
    set +e
    pack
    if [[ -n $CONFIG && -f $RUN/checkpoint.pt ]]; then
        "$PY" -m service.cli checkpoint slim "$RUN/checkpoint.pt" "$WORK/checkpoint-slim.pt" \
            && put "$WORK/checkpoint-slim.pt" checkpoint-slim.pt
        say "full checkpoint $RUN/checkpoint.pt: $(( $(stat -c %s "$RUN/checkpoint.pt") / 1048576 )) MiB, stays on the machine"
    fi
    "$PY" scripts/gpu/device_summary.py "$RES" --manifest weights/manifest.json --out "$OUT/summary.txt"
    (( ${#SKIPPED[@]} )) && say "skipped (out of time): ${SKIPPED[*]}"
    if (( ${#FAILED[@]} )); then
        say "FAILED steps: ${FAILED[*]}"
        (( rc == 0 )) && rc=1
    fi
    say "returned: $(cd "$OUT" && ls -l --block-size=K | tail -n +2 | awk '{print $9 " " $5}' | tr '\n' ' ')"
    [[ -n $ERR ]] && say "ERROR: $ERR"
    say "exit status $rc"
    rm -rf "$WORK"
    exec 1>&- 2>&-
    wait "$TEE_PID" 2>/dev/null
    exit "$rc"
}
trap finish EXIT

# --- set-up checks ----------------------------------------------------------------------------------
say "job $JOB$([[ $DRY == 1 ]] && echo ' (DRY RUN: cpu, tiny config)'), deadline ${DEADLINE}s, run dir ${CONFIG:+$RUN}, python $PY"
command -v "$PY" >/dev/null || die "python '$PY' not found (set PYTHON)"
"$PY" - <<'EOF' || die "a package the GPU code paths need is missing (carry it as a wheel: /work/.library/device/README.md)"
import importlib, sys
missing = []
for m in ("torch", "timm", "numpy", "PIL", "tqdm", "safetensors"):
    try:
        importlib.import_module(m)
    except ImportError as exc:
        missing.append(f"{m} ({exc})")
for m in ("matplotlib", "sklearn"):
    try:
        importlib.import_module(m)
    except ImportError:
        print(f"note: {m} missing: no loss-curve plot / t-SNE (not needed)")
if missing:
    sys.exit("missing: " + ", ".join(missing))
EOF
{
    echo "date: $(date -u +%FT%TZ)"; echo "git: $(git rev-parse HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l) changed files"
    uname -a; echo "cpus: $(nproc --all)"; free -g 2>/dev/null | head -2
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    "$PY" -c "import sys, torch, timm, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'numpy', numpy.__version__)"
} > "$RES/env.txt" 2>&1 || true
cat "$RES/env.txt"
if [[ $DRY != 1 ]]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || die "torch sees no CUDA device (torch $("$PY" -c 'import torch; print(torch.__version__)')): this job needs the GPU machine; use --dry-run here"
fi

# --- data: dequantise the carried copy ----------------------------------------------------------------
DATA=$WORK/modelnet40_train.npz
if [[ $CONFIG != "" || $JOB == eval || $JOB == bench ]]; then
    if [[ -f $DATA_Q ]]; then
        step restore-data 120 "$PY" -m service.cli data restore "$DATA_Q" "$DATA" --no-compress \
            || die "could not restore $DATA_Q"
    elif [[ $DRY == 1 ]]; then
        say "dry run: $DATA_Q missing, quantising a synthetic dataset instead"
        "$PY" -c "from model.synthetic import write_synthetic; write_synthetic('$WORK/synth.npz', n_per_class=40)"
        "$PY" -m service.cli data quantize "$WORK/synth.npz" "$WORK/synth_q8.npz"
        "$PY" -m service.cli data restore "$WORK/synth_q8.npz" "$DATA" --no-compress
    else
        die "$DATA_Q is missing: make it with 'cmah data quantize ../shared/data/modelnet40_train.npz $DATA_Q' and name 'device-carry' in carry"
    fi
    if [[ $DRY == 1 ]]; then   # a random subset, so that the CPU pipeline takes a few minutes
        "$PY" - "$DATA" "${CMAH_DRY_SHAPES:-240}" <<'EOF'
import sys
import numpy as np
from model.dataset import load_dataset
ds = load_dataset(sys.argv[1])
idx = np.sort(np.random.default_rng(0).permutation(len(ds))[: int(sys.argv[2])])
ds.subset(idx).save(sys.argv[1])
print(f"dry run: data subset of {len(idx)} of {len(ds)} shapes")
EOF
    fi
fi

# --- benchmarks -------------------------------------------------------------------------------------
if (( BENCH )); then
    if [[ $DRY == 1 ]]; then
        enc_args=(--devices cpu --n 3 --warmup 1 --batches 1 4 --seconds 0.1 --callers 2 --requests 2)
        search_args=(--device cpu --n 20000 --bits 16 64 --batches 1 16 --seconds 0.2 --copy-mib 16 --check-rows 20000)
    else
        enc_args=(--devices cuda --batches 1 8 64 256 1024 --seconds 0.5)
        search_args=(--device cuda --seconds 0.5)
    fi
    wanted() { [[ " $BENCHES " == *" $1 "* ]]; }   # is benchmark $1 in CMAH_BENCHES?
    # stdout (the markdown tables) to a file, shown after; progress lines (stderr) go to the log as they come
    if wanted encode; then
        step bench-encode 150 "$PY" bench/encode.py "${enc_args[@]}" --json "$RES/bench-encode.json" \
            > "$RES/bench-encode.md" || true
        cat "$RES/bench-encode.md"
    fi
    if wanted graphs; then   # CUDA-graph replay (model/cuda_graphs.py): codes, then speed
        step test-cuda-graphs 90 "$PY" -m pytest -q -p no:cacheprovider tests/model/test_cuda_graphs.py || true
        if [[ $DRY != 1 ]]; then
            step bench-graphs 90 "$PY" bench/cuda_graphs.py --json "$RES/bench-graphs.json" \
                > "$RES/bench-graphs.md" || true
            cat "$RES/bench-graphs.md"
        fi
    fi
    if wanted search; then
        step bench-search 150 "$PY" bench/search_gpu.py "${search_args[@]}" --json "$RES/bench-search.json" \
            > "$RES/bench-search.md" || true
        cat "$RES/bench-search.md"
    fi
    pack
fi

# --- training ---------------------------------------------------------------------------------------
TRAINED=0
if [[ -n $CONFIG ]]; then
    # --epochs: the time budget ends the run, not the CLI's default of 40 epochs (on the H200 the `cpu`
    # config does 40 epochs in 3 minutes: the 2026-12-04 session's run stopped there, half-way)
    train_args=(--data "$DATA" --config "$TRAIN_CONFIG" --device "$DEV" --out "$RUN" --resume --quiet
                --epochs 100000)
    if [[ -n $INIT ]]; then
        [[ -e $INIT ]] || die "--init-from $INIT: no such file or directory (carry it: device-carry/init.pt, see docs/development.md)"
        if [[ -f $RUN/checkpoint.pt ]]; then
            say "$RUN/checkpoint.pt exists (machine still warm): --resume continues it and ignores --init-from $INIT"
        fi
        train_args+=(--init-from "$INIT")
    fi
    left=$(( DEADLINE - SECONDS ))
    train_wall=$(( left - POST_RESERVE ))
    # the trainer's --time-limit-min counts from its first step: leave ~60 s for start-up (imports, data,
    # geometry, CUDA context) and the end (checkpoint, weights, plot)
    overhead=${CMAH_TRAIN_OVERHEAD_S:-60}
    train_s=$(( train_wall - overhead ))
    if [[ -n ${CMAH_TRAIN_MIN:-} ]]; then
        cap=$("$PY" -c "print(int(float('$CMAH_TRAIN_MIN') * 60))")
        (( cap < train_s )) && train_s=$cap
    fi
    if [[ $DRY == 1 ]]; then
        train_args+=(--max-steps "${CMAH_DRY_STEPS:-4}" --batch-size 8 --epochs 2)
        (( train_s > 60 )) && train_s=60
    fi
    if (( train_s < 30 )); then
        say "FAILED train: only ${train_s}s of training would fit before the deadline"
        FAILED+=("train (no time)")
    else
        train_min=$("$PY" -c "print(round($train_s / 60, 3))")
        budget=${CMAH_BUDGET_MIN:-$train_min}
        train_args+=(--time-limit-min "$train_min" --time-budget-min "$budget")
        # shellcheck disable=SC2206  # CMAH_TRAIN_ARGS is meant to be split into words
        extra=(${CMAH_TRAIN_ARGS:-})
        if step train $(( train_s + overhead )) "$PY" -m service.cli train "${train_args[@]}" "${extra[@]}"; then
            TRAINED=1
        fi
        # a run stopped at its limit still leaves a checkpoint and (every 5 min) weights: pack what exists
        [[ -f $RUN/weights/manifest.json ]] && TRAINED=1
        pack
    fi
fi

# --- refit-heads and evaluation ---------------------------------------------------------------------
eval_args=(--data "$DATA" --bits 16 32 64 --device "$DEV" --quiet)
[[ $DRY == 1 ]] && eval_args+=(--timing-repeats 5)
run_eval() {  # run_eval NAME WEIGHTS_DIR
    step "eval-$1" 150 "$PY" -m service.cli eval --weights "$2" "${eval_args[@]}" --json "$RES/eval-$1.json" || true
    pack
}
if (( TRAINED )); then
    if (( REFIT )); then
        refit_args=(--data "$DATA" --weights "$RUN/weights" --out "$RUN/weights-refit" --device "$DEV" --quiet)
        [[ $DRY == 1 ]] && refit_args+=(--epochs 2)
        step refit-heads 150 "$PY" -m service.cli refit-heads "${refit_args[@]}" || true
    fi
    [[ -f $RUN/weights-refit/manifest.json && $RUN/weights-refit/manifest.json -nt $RUN/weights/manifest.json ]] \
        && run_eval refit "$RUN/weights-refit"
    run_eval trained "$RUN/weights"
fi
if (( EVAL_SHIPPED )) && [[ $JOB != train-paper ]]; then
    run_eval shipped "$EVAL_WEIGHTS"
fi
say "all steps run"
