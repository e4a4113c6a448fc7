#!/usr/bin/env bash
# The whole GPU visit in one go: install what the machine lacks, show the machine, run the GPU
# tests, run the GPU benchmark. Logs and the benchmark's table go to OUTDIR.
#
#   bash scripts/gpu_check.sh OUTDIR           # PYTHON=... picks the interpreter (python3)
#
# The machine's own Python is used as it is (its torch is never replaced); what it lacks
# (pydantic and its needs) comes as wheels in .whl/ and goes into /tmp/site. Every step has
# its own time limit (about 8 minutes at most in all, about 5 usually) and a failing step does
# not stop the next. Exit code: the GPU tests' (0 when they passed, or skipped without CUDA).
set -u
out=${1:?usage: bash scripts/gpu_check.sh OUTDIR}
python=${PYTHON:-python3}  # word-split on purpose: PYTHON="uv run python" works
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS, read at its first use
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # `python -m trainer` from the checkout
set -o pipefail

step() { printf '\n== %s (%s UTC)\n' "$*" "$(date -u +%H:%M:%S)"; }

step "packages the machine lacks"
if $python -c "import pydantic" 2>/dev/null; then
  echo "pydantic is installed: nothing to add"
elif ls .whl/*.whl >/dev/null 2>&1; then
  timeout 30 $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || echo "installing .whl/*.whl failed"
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
else
  echo "no pydantic here and no wheels in .whl/: trainer cannot import (see docs/development/gpu-checks.md)"
fi

step "machine"
timeout 10 nvidia-smi || echo "nvidia-smi: not available"
timeout 30 $python - <<'EOF' || echo "the Python check failed (or took over 30 s)"
import platform, sys
import pydantic, torch
print(f"python {platform.python_version()} at {sys.executable}")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), pydantic {pydantic.VERSION}")
if torch.cuda.is_available():
    print(f"GPU {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}")
else:
    print("no CUDA device: the GPU tests skip, the benchmark runs --tiny on the CPU")
EOF
timeout 20 $python -m trainer --help >/dev/null && echo "python -m trainer --help: ok"

step "GPU tests"
timeout -k 10 165 $python -m pytest -m gpu -v -p no:cacheprovider tests/test_gpu.py 2>&1 \
  | tee "$out/gpu_tests.log"
tests=$?

step "GPU benchmark"
timeout -k 10 195 $python scripts/bench_gpu.py --out "$out/bench_gpu.md" --budget-s 175 2>&1 \
  | tee "$out/bench_gpu.log"
bench=$?

step "done: GPU tests exit $tests, benchmark exit $bench (124: timed out); files in $out"
ls -l "$out"
exit "$tests"
