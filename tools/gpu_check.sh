#!/usr/bin/env bash
# One prepared GPU check for a short window on one H100 / H200 (docs/benchmarks/README.md): the
# kernels' CUDA parity tests, their ahead-of-time compile under the machine's Triton, an int64-offset
# check past 2^31 elements, the trimmed kernel benchmark and a learner-step benchmark at a reduced
# layer count. Every step runs under `timeout`; a failing step does not stop the later ones; the
# whole run stays under GPU_CHECK_BUDGET_S (450 s: under 8 minutes). Writes ONE markdown report
# (rewritten after every step, so a run cut short still leaves one).
#
#   tools/gpu_check.sh [REPORT.md]             # on the GPU machine, any working directory
#   tools/gpu_check.sh --dry-run [REPORT.md]   # on CPU: prints every step and runs the CPU variant
#   GPU_CHECK_DRY_RUN=1 tools/gpu_check.sh     # the same
#
# The report goes to REPORT.md, else $OUT/gpu_check.md when $OUT is set (the device tool's folder
# that comes back), else docs/benchmarks/gpu_check-<UTC date>.md.
#
# The machine it is written for: Python 3.12 with torch 2.11, triton 3.6, transformers and pytest,
# NO megatron-core and no network. megatron-core comes from wheels shipped in .whl/ at the repository
# root (any other wheel there, e.g. liger-kernel, is installed too), into a private temporary directory
# (GPU_CHECK_SITE to keep one; the default one is removed at exit):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl megatron-core==0.16.1
# This repository is not installed there either: a folder of symbolic links maps the package layout
# of pyproject.toml (megatron_s2l/ and kernels/ as megatron_s2l.kernels) onto PYTHONPATH.

set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
REPORT=""
for arg in "$@"; do
    case $arg in
        --dry-run) DRY_RUN=1 ;;
        -h | --help)
            sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "gpu_check: unknown option $arg" >&2
            exit 2
            ;;
        *) REPORT=$arg ;;
    esac
done
[ "$DRY_RUN" = 0 ] || DRY_RUN=1
if [ -z "$REPORT" ]; then
    if [ -n "${OUT:-}" ]; then
        REPORT=$OUT/gpu_check.md
    else
        REPORT=$REPO/docs/benchmarks/gpu_check-$(date -u +%Y%m%d-%H%M).md
    fi
fi
mkdir -p "$(dirname "$REPORT")"
REPORT=$(cd "$(dirname "$REPORT")" && pwd)/$(basename "$REPORT")

BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
RESERVE_S=25 # kept for each step still to come
START=$(date +%s)
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
# The wheels go to a fresh private directory (mktemp -d: 0700, unpredictable name), removed at exit: a
# fixed /tmp path first on PYTHONPATH would run whatever another local user put there first.
if [ -n "${GPU_CHECK_SITE:-}" ]; then
    SITE=$GPU_CHECK_SITE
else
    SITE=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
    trap 'rm -rf "$SITE"' EXIT
fi
SHIM=$WORK/shim
if [ -z "${PYTHON:-}" ] && [ "$DRY_RUN" = 1 ] && [ -x "$REPO/.venv/bin/python" ]; then
    PYTHON=$REPO/.venv/bin/python
fi
PY=${PYTHON:-python3}

# The package layout of pyproject.toml without installing: megatron_s2l/* and kernels/ as
# megatron_s2l.kernels, through links (edits in the checkout show through).
mkdir -p "$SHIM/megatron_s2l"
for entry in "$REPO"/megatron_s2l/*; do
    ln -sfn "$entry" "$SHIM/megatron_s2l/$(basename "$entry")"
done
ln -sfn "$REPO/kernels" "$SHIM/megatron_s2l/kernels"
export PYTHONPATH=$SHIM:$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR=$WORK/inductor
export PY REPO SITE WORK
if [ "$DRY_RUN" = 1 ]; then
    export TRITON_INTERPRET=1 # the CPU variants run the Triton kernels in the interpreter
fi

KERNEL_TESTS="$REPO/tests/unit/test_kernels.py $REPO/tests/unit/test_kernels_grpo.py"
KERNEL_TESTS="$KERNEL_TESTS $REPO/tests/unit/test_kernels_fused_linear.py $REPO/tests/unit/test_kernels_tp.py"
# pytest runs from $WORK: `python -m pytest` puts the working directory on sys.path, and the
# repository root's kernels/ would shadow Hugging Face's `kernels` package there.
PYTEST="cd $WORK && \$PY -m pytest -p no:cacheprovider -q -rfEs"

NAMES=() STATUS=() SECONDS_TAKEN=() LIMITS=() COMMANDS=() LOGS=()

write_report() {
    local tmp=$REPORT.tmp i
    {
        echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M') UTC"
        echo
        if [ "$DRY_RUN" = 1 ]; then
            echo "**Dry run on CPU** (\`--dry-run\`): each step ran its CPU variant (the GPU tests skip,"
            echo "the benchmarks run their \`--cpu-smoke\` mode); nothing here measures a GPU."
            echo
        fi
        echo "Produced by \`tools/gpu_check.sh\` (see docs/benchmarks/README.md). Checkout:"
        echo "\`$(git -C "$REPO" log -1 --format='%h %s' 2>/dev/null || echo 'no git')\`"
        echo "($(git -C "$REPO" status --porcelain 2>/dev/null | wc -l | tr -d ' ') files changed or untracked)."
        echo "Budget ${BUDGET_S} s; elapsed $(($(date +%s) - START)) s."
        echo
        echo "| # | step | status | seconds | limit s |"
        echo "|---|---|---|---|---|"
        for i in "${!NAMES[@]}"; do
            echo "| $((i + 1)) | ${NAMES[$i]} | ${STATUS[$i]} | ${SECONDS_TAKEN[$i]} | ${LIMITS[$i]} |"
        done
        for i in "${!NAMES[@]}"; do
            echo
            echo "## $((i + 1)). ${NAMES[$i]}: ${STATUS[$i]}"
            echo
            echo '```bash'
            echo "${COMMANDS[$i]}"
            echo '```'
            echo
            if [ -s "${LOGS[$i]}" ]; then
                local lines
                lines=$(wc -l <"${LOGS[$i]}")
                if [ "$lines" -gt 250 ]; then
                    echo "Output (last 250 of $lines lines):"
                else
                    echo "Output:"
                fi
                echo
                echo '```text'
                tail -n 250 "${LOGS[$i]}" | sed 's/```/` ` `/g'
                echo '```'
            else
                echo "(no output)"
            fi
        done
    } >"$tmp" && mv "$tmp" "$REPORT"
}

# run_step NAME LIMIT_S STEPS_AFTER GPU_COMMAND [CPU_COMMAND]
#   Runs GPU_COMMAND (or, in a dry run, CPU_COMMAND; "-" prints the command without running it)
#   under `timeout`: at most LIMIT_S, and never past the budget.
run_step() {
    local name=$1 own=$2 after=$3 cmd=$4 cpu_cmd=${5:-$4}
    local i=${#NAMES[@]} log=$WORK/step$((${#NAMES[@]} + 1)).log left limit rc t0
    left=$((START + BUDGET_S - $(date +%s)))
    # Keep RESERVE_S for each later step; when that leaves too little, an earlier step (the set-up,
    # the parity tests) goes first and the later ones get what remains.
    limit=$((left - after * RESERVE_S))
    [ "$limit" -ge 10 ] || limit=$left
    [ "$limit" -le "$own" ] || limit=$own
    [ "$limit" -ge 0 ] || limit=0
    NAMES+=("$name") LOGS+=("$log") LIMITS+=("$limit")
    if [ "$DRY_RUN" = 1 ] && [ "$cpu_cmd" != "$cmd" ]; then
        COMMANDS+=("# on the GPU machine:"$'\n'"$cmd"$'\n'"# in this dry run on CPU:"$'\n'"$cpu_cmd")
        cmd=$cpu_cmd
    else
        COMMANDS+=("$cmd")
    fi
    echo "=== [$((i + 1))] $name (limit ${limit} s)"
    echo "$cmd"
    if [ "$cmd" = "-" ]; then
        STATUS+=("DRY-RUN (printed, not run)") SECONDS_TAKEN+=(0)
        write_report
        return
    fi
    if [ "$limit" -lt 10 ]; then
        STATUS+=("SKIPPED (budget spent)") SECONDS_TAKEN+=(0)
        write_report
        return
    fi
    t0=$(date +%s)
    (cd "$REPO" && timeout -k 5 "$limit" bash -c "$cmd") 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    SECONDS_TAKEN+=($(($(date +%s) - t0)))
    case $rc in
        0) STATUS+=("PASS") ;;
        124 | 137) STATUS+=("TIMEOUT (${limit} s)") ;;
        *) STATUS+=("FAIL (exit $rc)") ;;
    esac
    echo "=== [$((i + 1))] $name: ${STATUS[$i]} in ${SECONDS_TAKEN[$i]} s"
    write_report
}

echo "gpu_check: report -> $REPORT; work dir $WORK; python $PY; dry run $DRY_RUN"

# The import check of the set-up step: megatron-core from the wheels, this checkout through the links
# (an editable install of the checkout, as in the CPU venv of a dry run, is set aside for it).
cat >"$WORK/import_check.py" <<'EOF'
import sys

sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
import megatron.core  # noqa: E402

import megatron_s2l.kernels  # noqa: E402
from megatron_s2l.kernels.logprobs import TRITON_OPS  # noqa: E402, F401

print("megatron.core", megatron.core.__version__, "from", megatron.core.__file__)
print("megatron_s2l.kernels from", megatron_s2l.kernels.__file__)
EOF

run_step "machine and versions" 30 8 '
nvidia-smi || echo "nvidia-smi: not available"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>/dev/null
$PY - <<EOF
import platform, sys
import torch, triton
print("python", sys.version.split()[0], platform.machine())
print("torch", torch.__version__, "cuda", torch.version.cuda, "device:",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
print("triton", triton.__version__)
for name in ("transformers", "megatron.core", "liger_kernel", "pytest"):
    try:
        module = __import__(name, fromlist=["_"])
        print(name, getattr(module, "__version__", "?"))
    except Exception as exc:
        print(name, "not importable:", type(exc).__name__)
EOF
nproc; free -g | head -2'

run_step "install megatron-core (and other wheels) from .whl/" 60 7 '
if $PY -c "import megatron.core" 2>/dev/null; then echo "megatron.core already importable"; else
  ls -l .whl/*.whl || { echo "no .whl/*.whl next to the repository: see docs/benchmarks/README.md"; exit 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
$PY "$WORK/import_check.py"' '
ls -l .whl/*.whl 2>/dev/null || echo "no .whl/ here (the GPU run needs it: see docs/benchmarks/README.md)"
echo "(dry run: nothing installed; the CPU venv has megatron-core)"
$PY "$WORK/import_check.py"'

run_step "kernel CUDA parity tests (pytest -m gpu)" 150 6 \
    "$PYTEST -m gpu -k 'not int64' $KERNEL_TESTS"

run_step "kernel AOT compile and vector loads under this Triton" 90 5 \
    "$PYTEST $REPO/tests/unit/test_kernels_compile.py"

run_step "int64 offsets: 14,200 x 151,936 bf16 logits (> 2^31 elements)" 90 4 \
    "$PYTEST -m gpu -k int64 $REPO/tests/unit/test_kernels.py"

# The learner's path: bf16 logits, no entropy (neither the log-prob pass nor a loss without an
# entropy bonus computes it), the four widths per TP rank.
run_step "kernel benchmark: bf16, no entropy, TP 1/2/4/8 widths (trimmed grid)" 210 3 \
    '$PY tools/bench_kernels.py --no-entropy --iters 10 --warmup 2' \
    '$PY tools/bench_kernels.py --no-entropy --cpu-smoke'

run_step "learner step: qwen3-8b widths, 4 layers, 8 x 2048 tokens" 150 2 \
    '$PY tools/bench_learner_step.py --shape qwen3-8b --num-layers 4 --batch 8 --seq-len 2048 --steps 2' \
    '$PY tools/bench_learner_step.py --cpu-smoke'

run_step "learner step, fused output layer (no whole logits): qwen3-8b widths, 4 layers" 120 1 \
    '$PY tools/bench_learner_step.py --shape qwen3-8b --num-layers 4 --batch 8 --seq-len 2048 --steps 2 --fused-output' \
    '$PY tools/bench_learner_step.py --cpu-smoke --fused-output'

# Colocated mode, the learner's side: on CUDA the offload moves the optimizer state to
# pinned host memory and frees the gradient buffers; metrics, weights and a checkpoint round trip
# must equal a learner that never offloads (bf16 there, fp32 on CPU). Unverified until this runs.
run_step "learner offload between steps on CUDA (colocated mode)" 120 1 \
    "$PYTEST $REPO/tests/integration/test_learner_offload.py"

# What is left of the budget: Megatron's default fp32 logits, with the entropy, at the TP 2 width.
run_step "kernel benchmark: fp32 logits with entropy, width 76,032" 60 0 \
    '$PY tools/bench_kernels.py --dtype fp32 --widths 76032 --compile-widths --iters 10 --warmup 2' \
    '$PY tools/bench_kernels.py --dtype fp32 --cpu-smoke --widths 150'

# Weight sync, `tensor` transport: the per-TP-rank CUDA IPC payload (flattened bucket, one
# serialization per consumer) opened by two processes, as SGLang's TP ranks do (no server).
run_step "weight sync: tensor transport CUDA IPC payload, 2 consumers" 60 0 \
    '$PY tools/check_tensor_ipc.py --ranks 2' \
    '$PY tools/check_tensor_ipc.py --cpu-smoke'

write_report
FAILED=0
for status in "${STATUS[@]}"; do
    case $status in PASS | DRY-RUN*) ;; *) FAILED=$((FAILED + 1)) ;; esac
done
echo "gpu_check: $((${#NAMES[@]} - FAILED)) of ${#NAMES[@]} steps passed in $(($(date +%s) - START)) s; report: $REPORT"
[ "$FAILED" = 0 ]
