#!/usr/bin/env bash
# The checks that need a GPU, prepared for the day one is available (never run on a CPU box).
#
#   bash scripts/gpu_check.sh            # from the repository root, or from anywhere
#
# Steps, each under its own timeout, then a summary (exit 1 if any step failed or timed out):
#   1. cuda-tests   the tests that skip without CUDA (files in tests/ that ask
#                   torch.cuda.is_available or device_count); a "needs a CUDA GPU" skip fails
#   2. one-gpu      mygpt2 train on cuda, bf16 (auto), --compile, --eval_data, --eval_tasks,
#                   health rows, then --resume to more steps; the eval rows are checked
#   3. two-ranks    torchrun --nproc_per_node 2, NCCL, with the same evaluations (skipped,
#                   saying so, with fewer than 2 GPUs): the all-reduce of a CPU tensor in the
#                   run-time evaluations failed here at the first evaluation
#   4. gpu-124m     GPT-2 124M's shape on one GPU in bf16 with --compile: tokens/s and MFU
#                   from metrics.jsonl (GPT-2's vocabulary when gpt2.tiktoken is at hand,
#                   else the byte tokenizer, and the summary says which)
#   5. bench-train  benchmarks/bench_train.py --shapes 124M: ours against Hugging Face at
#                   124M, fp32 and bf16 autocast. That script measures the CPU (it has no
#                   device option), so this is the GPU host's CPU, reported as such.
#
# Settings (environment): PYTHON (default .venv/bin/python, else python3), GPU_CHECK_DIR (work
# directory, default a new temporary one), GPU_CHECK_DATA (a text file or any --data source;
# default ../shared/data/tinyshakespeare.txt when present, else the built-in stdlib corpus),
# GPU_CHECK_TIKTOKEN (a gpt2.tiktoken; default ../shared/data/gpt2.tiktoken when present),
# GPU_CHECK_STEPS (one-gpu steps, default 200), GPU_CHECK_ONLY (space-separated step names),
# GPU_CHECK_DEVICE (default cuda; cpu only to smoke-test this script's flags on a CPU box).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$(pwd)

if [[ -n "${PYTHON:-}" ]]; then
    PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi
WORK=${GPU_CHECK_DIR:-$(mktemp -d -t mygpt2-gpu-check.XXXXXX)}
mkdir -p "$WORK"
STEPS=${GPU_CHECK_STEPS:-200}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
ONLY=${GPU_CHECK_ONLY:-}
SHARED="$ROOT/../shared/data"

if [[ -n "${GPU_CHECK_DATA:-}" ]]; then
    DATA=$GPU_CHECK_DATA
elif [[ -f "$SHARED/tinyshakespeare.txt" ]]; then
    DATA="$SHARED/tinyshakespeare.txt"
else
    DATA=stdlib
fi
TIKTOKEN=${GPU_CHECK_TIKTOKEN:-$SHARED/gpt2.tiktoken}

NAMES=()
RESULTS=()
SECONDS_TAKEN=()
NOTES=()

record() { # name result seconds note
    NAMES+=("$1")
    RESULTS+=("$2")
    SECONDS_TAKEN+=("$3")
    NOTES+=("$4")
    printf '\n== %s: %s (%ss) %s\n' "$1" "$2" "$3" "$4"
}

wanted() { # whether step $1 runs (GPU_CHECK_ONLY empty: all of them)
    [[ -z "$ONLY" || " $ONLY " == *" $1 "* ]]
}

run_step() { # name seconds log command...: runs it under timeout, returns its status
    local name=$1 limit=$2 log=$3
    shift 3
    printf '\n== %s (timeout %ss): %s\n' "$name" "$limit" "$*"
    timeout --signal=TERM --kill-after=30 "$limit" "$@" 2>&1 | tee "$log"
    return "${PIPESTATUS[0]}"
}

status_word() { # exit status -> PASS / TIMEOUT / FAIL
    case $1 in
        0) echo PASS ;;
        124 | 137) echo TIMEOUT ;;
        *) echo "FAIL(rc=$1)" ;;
    esac
}

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
echo "gpu_check: python $PY, $GPUS CUDA GPU(s), data $DATA, work directory $WORK"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
if [[ "$GPUS" -lt 1 ]]; then
    echo "gpu_check: PyTorch sees no CUDA GPU here; every step below needs one." >&2
fi

# inputs of the evaluation runs: held-out text (the repository's docs) and two task files
cat README.md docs/*.md >"$WORK/held_out.txt"
cat >"$WORK/tasks_a.jsonl" <<'EOF'
{"ctx": "The cat sat on the", "endings": [" mat.", " sky zq", " qqq xv"], "label": 0}
{"ctx": "One, two, three,", "endings": [" zz yy", " four.", " kq jj"], "label": 1}
{"ctx": "To be, or not", "endings": [" to be", " kx", " jjj"], "label": 0}
EOF
cat >"$WORK/tasks_b.jsonl" <<'EOF'
{"context": "Good morning, how are", "choices": [" xqz", " you?", " jjj kk"], "answer": 1}
{"context": "Once upon a", "choices": [" time", " qx zz", " vvv"], "answer": 0}
EOF
EVAL_FLAGS=(--eval_data "$WORK/held_out.txt" --eval_tasks "$WORK/tasks_a.jsonl,$WORK/tasks_b.jsonl")
SMALL=(--data "$DATA" --tokenizer_path bytes --stdlib_max_mb 4 --n_layers 4 --n_heads 4
    --n_emb 256 --T 256 --batch_size 16 --macro_batch_size 32 --eval_batches 8
    --device "$DEVICE" --cache_dir "$WORK/cache")

check_evals() { # out_dir minimum-rows: the eval rows carry every run-time evaluation
    "$PY" - "$1" "$2" <<'EOF'
import json, math, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl", encoding="utf-8")]
evals = [r for r in rows if r["kind"] == "eval"]
assert len(evals) >= int(sys.argv[2]), f"{len(evals)} eval rows"
keys = ("val_loss", "val_bpb", "eval_data_loss", "eval_data_bpb", "acc/tasks_a", "acc/tasks_b")
for row in evals:
    for key in keys:
        assert math.isfinite(row[key]), (row["step"], key, row.get(key))
health = [r for r in rows if r["kind"] == "health"]
last = evals[-1]
print(f"{len(evals)} evaluations, last at step {last['step']}: val_loss {last['val_loss']:.4f}, "
      f"val_bpb {last['val_bpb']:.4f}, eval_data_bpb {last['eval_data_bpb']:.4f}, "
      f"acc {last['acc/tasks_a']:.2f}/{last['acc/tasks_b']:.2f}; {len(health)} health rows")
EOF
}

# ----------------------------------------------------------------------------- 1. cuda-tests
if wanted cuda-tests; then
    mapfile -t CUDA_TESTS < <(grep -l -E "cuda\.is_available|cuda\.device_count" tests/test_*.py)
    start=$SECONDS
    run_step cuda-tests 600 "$WORK/cuda-tests.log" \
        "$PY" -m pytest -q -rs -p no:cacheprovider "${CUDA_TESTS[@]}"
    rc=$?
    result=$(status_word "$rc")
    skips=$(grep -c "^SKIPPED" "$WORK/cuda-tests.log")
    if grep -q "needs a CUDA GPU" "$WORK/cuda-tests.log"; then
        result="FAIL(no CUDA)"
    fi
    record cuda-tests "$result" $((SECONDS - start)) "${CUDA_TESTS[*]}; $skips skipped (reasons in the log)"
fi

# ----------------------------------------------------------------------------- 2. one-gpu
if wanted one-gpu; then
    start=$SECONDS
    out="$WORK/one-gpu"
    half=$((STEPS / 2))
    run_step one-gpu 420 "$WORK/one-gpu.log" \
        "$PY" -m mygpt2.cli train "${SMALL[@]}" "${EVAL_FLAGS[@]}" --out_dir "$out" \
        --compile true --max_steps "$half" --eval_interval $((half / 2)) \
        --health_interval $((half / 2)) --keep_checkpoints log
    rc=$?
    if [[ $rc -eq 0 ]]; then # then resume to STEPS: a GPU checkpoint continues
        run_step one-gpu-resume 300 "$WORK/one-gpu-resume.log" \
            "$PY" -m mygpt2.cli train "${SMALL[@]}" "${EVAL_FLAGS[@]}" --out_dir "$out" \
            --compile true --max_steps "$STEPS" --resume
        rc=$?
    fi
    note=""
    if [[ $rc -eq 0 ]]; then
        note=$(check_evals "$out" 3 2>&1) || rc=1
    fi
    record one-gpu "$(status_word "$rc")" $((SECONDS - start)) "$note"
fi

# ----------------------------------------------------------------------------- 3. two-ranks
if wanted two-ranks; then
    if [[ "$GPUS" -lt 2 ]]; then
        record two-ranks SKIP 0 "needs 2 GPUs, this machine has $GPUS"
    else
        start=$SECONDS
        out="$WORK/two-ranks"
        run_step two-ranks 420 "$WORK/two-ranks.log" \
            "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 run_train.py \
            "${SMALL[@]}" "${EVAL_FLAGS[@]}" --out_dir "$out" --max_steps 60 --eval_interval 20
        rc=$?
        note=""
        if [[ $rc -eq 0 ]]; then
            note=$(check_evals "$out" 3 2>&1) || rc=1
            grep -q "processes 2" "$WORK/two-ranks.log" || { rc=1; note="$note; not 2 processes"; }
        fi
        record two-ranks "$(status_word "$rc")" $((SECONDS - start)) "$note"
    fi
fi

# ----------------------------------------------------------------------------- 4. gpu-124m
if wanted gpu-124m; then
    start=$SECONDS
    out="$WORK/gpu-124m"
    if [[ -f "$TIKTOKEN" ]]; then
        TOKENIZER=(--use_tiktoken true --tiktoken_file "$TIKTOKEN")
        vocab="GPT-2's vocabulary: 124M parameters"
    else
        TOKENIZER=(--tokenizer_path bytes)
        vocab="byte tokenizer (no gpt2.tiktoken): GPT-2's shape, 85M parameters + embeddings"
    fi
    run_step gpu-124m 420 "$WORK/gpu-124m.log" \
        "$PY" -m mygpt2.cli train --data "$DATA" "${TOKENIZER[@]}" --stdlib_max_mb 8 \
        --cache_dir "$WORK/cache" --out_dir "$out" --device "$DEVICE" --dtype bfloat16 --compile true \
        --n_layers 12 --n_heads 12 --n_emb 768 --T 1024 --batch_size 16 --macro_batch_size 64 \
        --max_steps 40 --eval_interval 1000 --eval_batches 4
    rc=$?
    note=$vocab
    if [[ $rc -eq 0 ]]; then
        note="$note; $("$PY" - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl", encoding="utf-8")]
steady = [r for r in rows if r["kind"] == "train"][10:]  # after compilation and warmup
tok = statistics.median(r["tokens_per_s"] for r in steady)
mfu = [r["mfu"] for r in steady if r.get("mfu") is not None]
mfu_text = f", MFU {statistics.median(mfu):.1%}" if mfu else ", MFU unknown (GPU not in the table)"
print(f"median {tok:,.0f} tokens/s over steps {steady[0]['step']}-{steady[-1]['step']}{mfu_text}")
EOF
)" || rc=1
    fi
    record gpu-124m "$(status_word "$rc")" $((SECONDS - start)) "$note"
fi

# ----------------------------------------------------------------------------- 5. bench-train
if wanted bench-train; then
    start=$SECONDS
    run_step bench-train 600 "$WORK/bench-train.log" \
        "$PY" benchmarks/bench_train.py --shapes 124M --steps 5 --warmup 2
    rc=$?
    record bench-train "$(status_word "$rc")" $((SECONDS - start)) \
        "the host's CPU (bench_train.py has no device option); table in $WORK/bench-train.log"
fi

# ----------------------------------------------------------------------------- summary
echo
echo "gpu_check summary ($GPUS GPU(s); logs in $WORK):"
failed=0
for i in "${!NAMES[@]}"; do
    printf '  %-12s %-14s %6ss  %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${SECONDS_TAKEN[$i]}" "${NOTES[$i]}"
    case ${RESULTS[$i]} in
        PASS | SKIP) ;;
        *) failed=1 ;;
    esac
done
exit $failed
