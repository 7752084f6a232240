#!/usr/bin/env bash
# GPU readiness in one command, on a machine with NVIDIA GPUs (issue 14, item 5):
#   1. parity with the official code on CUDA (tests/test_parity.py with HYBRID_TEST_DEVICE=cuda);
#   2. bf16 and fp32 throughput and fraction of the matmul peak (MFU) of the Sudoku (TRM MLP, TRM attention, HRM) and
#      Maze (TRM, HRM) paper configs, with bench/bench_core.py --device cuda;
#   3. a 50-step training run of configs/cpu/sudoku4x4.yaml on 1 GPU and on all GPUs (accelerate launch).
# Every figure goes to one results file, OUT/results.txt (bench JSON lines to OUT/bench.jsonl).
#
#   bash bench/gpu_check.sh [--out DIR]        # run from the repository root, with the project's python on PATH
#   bash bench/gpu_check.sh --dry-run          # no GPU: the same steps on the CPU, tiny sizes (checks the script)
#
# Environment: PYTHON (default python), HYBRID_REFERENCE_ORACLES (default ../shared/reference/oracles),
# BENCH_STEPS (timed steps per variant, default 20). Per-GPU batches are those of the official launches: TRM Sudoku
# 768 on 1 GPU, TRM Maze 768 over 4 GPUs, HRM 768 over 8 GPUs.
set -euo pipefail

DRY_RUN=0
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1; shift ;;
        --out) OUT="$2"; shift 2 ;;
        *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-runs/gpu_check_$(date +%Y%m%d_%H%M%S)}"
ORACLES="${HYBRID_REFERENCE_ORACLES:-../shared/reference/oracles}"
STEPS="${BENCH_STEPS:-20}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

fail() { echo "gpu_check.sh: $*" >&2; exit 1; }

# ---- fail early: everything below needs these -----------------------------------------------------------------------
command -v "$PYTHON" >/dev/null || fail "no python at '$PYTHON' (set PYTHON=...)"
command -v accelerate >/dev/null || fail "no 'accelerate' on PATH (activate the project's environment)"
[[ -d "$ORACLES" ]] || fail "no parity oracles at $ORACLES (set HYBRID_REFERENCE_ORACLES)"
if [[ $DRY_RUN == 0 ]]; then
    command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this machine has no NVIDIA driver (use --dry-run to test the script)"
    NGPU=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
    [[ "$NGPU" -ge 1 ]] || fail "torch sees no CUDA device (torch build without CUDA, or CUDA_VISIBLE_DEVICES empty)"
    DEVICE=cuda
else
    NGPU=2  # two CPU processes stand in for 'all GPUs'
    DEVICE=cpu
    STEPS=2
fi
[[ -e "$OUT" ]] && fail "$OUT exists; pass a new --out"
mkdir -p "$OUT"
RESULTS="$OUT/results.txt"

log() { echo "$*" | tee -a "$RESULTS"; }
section() { log ""; log "==== $* ===="; }

section "machine"
log "date: $(date -Is)   commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)   dry run: $DRY_RUN"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', torch.cuda.device_count())" | tee -a "$RESULTS"
if [[ $DRY_RUN == 0 ]]; then nvidia-smi -L | tee -a "$RESULTS"; fi

# ---- 1. parity on the device ----------------------------------------------------------------------------------------
section "parity with the official code (tests/test_parity.py, HYBRID_TEST_DEVICE=$DEVICE)"
# -rs lists skips: a skipped parity test is a failure here.
if ! HYBRID_TEST_DEVICE=$DEVICE HYBRID_REFERENCE_ORACLES="$ORACLES" \
    "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_parity.py 2>&1 | tail -n 25 | tee -a "$RESULTS"; then
    fail "parity tests failed on $DEVICE (see $RESULTS)"
fi
if tail -n 1 "$RESULTS" | grep -q "skipped"; then fail "parity tests were skipped (see $RESULTS)"; fi

# ---- 2. throughput and MFU ------------------------------------------------------------------------------------------
section "throughput: bench/bench_core.py --device $DEVICE (fraction of peak = MFU against a bf16 / fp32 matmul)"
if [[ $DRY_RUN == 0 ]]; then
    BENCHES="sudoku_mlp:768 sudoku_att:768 hrm_sudoku:96 maze:192 hrm_maze:96"
else
    BENCHES="tiny:16"
fi
for item in $BENCHES; do
    config="${item%%:*}" batch="${item##*:}"
    log "-- $config, batch $batch"
    if ! "$PYTHON" bench/bench_core.py --config "$config" --device "$DEVICE" --dtype bfloat16 float32 \
        --batch "$batch" --steps "$STEPS" --warmup 3 --json-out "$OUT/bench.jsonl" 2>&1 | tee -a "$RESULTS"; then
        fail "bench_core.py --config $config failed (see $RESULTS)"
    fi
done
log "-- training-step memory against T (must not grow)"
MEMORY_CONFIG=$( [[ $DRY_RUN == 0 ]] && echo sudoku_mlp || echo tiny )
if ! "$PYTHON" bench/bench_core.py --config "$MEMORY_CONFIG" --device "$DEVICE" --dtype bfloat16 --steps 1 \
    --warmup 0 --no-eval --memory-T 2 4 8 2>&1 | tail -n 4 | tee -a "$RESULTS"; then
    fail "the memory check failed (see $RESULTS)"
fi

# ---- 3. short training runs on 1 and on all GPUs --------------------------------------------------------------------
TRAIN_STEPS=$( [[ $DRY_RUN == 0 ]] && echo 50 || echo 4 )
section "training: configs/cpu/sudoku4x4.yaml, $TRAIN_STEPS steps, 1 and $NGPU processes"
DATA="$OUT/sudoku4x4"
"$PYTHON" recipes/build_data.py sudoku-gen --size 4 --givens 5 --train-size 3000 --test-size 1000 \
    --output-dir "$DATA" > "$OUT/build_data.log" 2>&1 || fail "building the 4x4 Sudoku data failed (see $OUT/build_data.log)"
for n in 1 "$NGPU"; do
    run="$OUT/train_${n}proc"
    if [[ $DRY_RUN == 0 ]]; then
        launch=(accelerate launch --num_processes "$n" --num_machines 1 --mixed_precision no --dynamo_backend no)
        if [[ $n -gt 1 ]]; then launch+=(--multi_gpu); fi
    else  # accelerate launch --cpu starts one process whatever --num_processes says
        launch=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$n")
    fi
    start=$("$PYTHON" -c "import time; print(time.time())")
    "${launch[@]}" recipes/train_pure.py --config configs/cpu/sudoku4x4.yaml "data.path=$DATA" "run.output_dir=$run" \
        "training.total_steps=$TRAIN_STEPS" training.lr_warmup_steps=2 run.log_every=1 run.progress_bar=false \
        run.trackers=[] eval.interval=0 eval.max_examples=256 > "$run.log" 2>&1 \
        || fail "training on $n process(es) failed (see $run.log)"
    grep -q "on $n process(es)" "$run.log" || fail "the launch did not start $n synchronised processes (see $run.log)"
    "$PYTHON" - "$run/metrics.jsonl" "$n" "$start" <<'EOF' | tee -a "$RESULTS"
import json, statistics, sys, time
path, n, seconds = sys.argv[1], sys.argv[2], time.time() - float(sys.argv[3])
records = [json.loads(line) for line in open(path)]
train = [r for r in records if r["split"] == "train"]
evals = [r for r in records if r["split"] == "eval"]
rate = statistics.median(r["steps_per_s"] for r in train[len(train) // 2:])
print(f"{n} process(es): {len(train)} steps, wall {seconds:.1f} s (launch included), median {rate:.1f} steps/s "
      f"over the second half, loss {train[0]['loss']:.4f} -> {train[-1]['loss']:.4f}, "
      f"eval exact {evals[-1].get('exact_accuracy', float('nan')):.4f}")
EOF
done

section "done"
log "all checks passed; figures above, bench JSON lines in $OUT/bench.jsonl"
