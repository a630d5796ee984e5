#!/usr/bin/env bash
# Everything this project checks on a GPU, in one command (CI has no GPU):
#   1. the CUDA tests (tests/*: every test whose name says cuda; they skip on CPU);
#   2. the Triton kernels of mixed_conv2d on the GPU against the float64 oracle (fp32, fp16,
#      bf16; tests/test_triton_mixed.py with A2D2C_TRITON_DEVICE=cuda, one autotune config);
#   3. `a2d2c bench --device cuda --dtype bf16 --preset issue6` (issue 6's table on CUDA) and
#      `--preset gpu` (issue 15's rows: CIFAR ResNet-18 b128 and ResNet-50 224² b64 training,
#      peak memory), every layer with auto, impl=triton and (where exact) impl=triton_plus;
#      then the layer grid on CUDA (`--preset grid --grid reduced`, resumable) with what
#      time is left;
#   4. optionally (STUDIES="sampling num_points ..."), studies on CUDA, one process per
#      (study, seed[, group of variants with SPLIT=n]) side by side, resuming the committed
#      records under results/cuda/ (finished runs are skipped); the new records come back
#      in $OUT/studies.tgz (unpack it in the repository root).
# Each step has its own time limit, so a hang in one still returns the others' output; the
# defaults (TEST_S + TRITON_S + BENCH_S + GPU_BENCH_S + GPU_TRITON_S + GRID_S = 570 s) fit
# ~10 minutes.
# Usage: OUT=/tmp/gpu bash scripts/gpu_checks.sh
# Needs: torch with CUDA, pyyaml, safetensors, tqdm, pytest (no install: runs from src/);
# Fashion-MNIST under data/FashionMNIST/raw for the studies.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

{
  nvidia-smi -L
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc
} 2>&1 | tee "$OUT/env.txt"

echo "== CUDA tests"
timeout "${TEST_S:-120}" "$PY" -m pytest -q -rs -p no:cacheprovider tests -k cuda 2>&1 | tee "$OUT/tests.txt"

echo "== Triton kernels on the GPU (vs the float64 oracle)"
A2D2C_TRITON_CHILD=1 A2D2C_TRITON_DEVICE=cuda A2D2C_TRITON_AUTOTUNE=0 \
  timeout "${TRITON_S:-150}" "$PY" -m pytest -q -rs -p no:cacheprovider \
  tests/test_triton_mixed.py 2>&1 | tee "$OUT/triton_tests.txt"

echo "== bench (bf16)"
# The baselines' measured choice ('<layer>:tuned') would also time (and compile) Triton for
# every layer shape: left out here; A2D2C's (kernel/unfold/plus, whole layer) is in.
timeout "${BENCH_S:-90}" "$PY" -m a2d2c bench --device cuda --dtype bf16 --preset issue6 \
  --repeats 5 --variants 'a2d2c:*' condconv dcd dynamicconv odconv \
  --out "$OUT" 2>&1 | tee "$OUT/bench.txt"

echo "== bench: issue 15's GPU rows (bf16)"
# Two runs (a preset's CSV is written at its end; a timeout in the second keeps the first):
# the torch paths, then the Triton ones. One Triton config per kernel
# (A2D2C_TRITON_AUTOTUNE=0): autotuning every distinct layer shape of a ResNet-50 would
# spend the whole budget compiling; tune later, separately.
timeout "${GPU_BENCH_S:-90}" "$PY" -m a2d2c bench --device cuda --dtype bf16 --preset gpu \
  --repeats 5 --variants 'a2d2c:auto' 'a2d2c:tuned' condconv dynamicconv odconv \
  --out "$OUT/gpu_rows" 2>&1 | tee "$OUT/bench_gpu.txt"
A2D2C_TRITON_AUTOTUNE=0 timeout "${GPU_TRITON_S:-90}" "$PY" -m a2d2c bench --device cuda \
  --dtype bf16 --preset gpu --repeats 5 --variants 'a2d2c:triton' 'a2d2c:triton_plus' \
  'condconv:triton' 'condconv:triton_plus' 'dynamicconv:triton' 'dynamicconv:triton_plus' \
  'odconv:triton' --out "$OUT/gpu_rows_triton" 2>&1 | tee "$OUT/bench_gpu_triton.txt"

echo "== grid on CUDA (fp32, resumable: rerun to continue; with the Triton paths)"
A2D2C_TRITON_AUTOTUNE=0 timeout "${GRID_S:-30}" "$PY" -m a2d2c bench --device cuda --preset grid --grid reduced \
  --repeats 3 --out "$OUT" 2>&1 | tail -n 40 | tee "$OUT/grid.txt"

if [ -n "${STUDIES:-}" ]; then
  echo "== studies on CUDA: $STUDIES"
  pids=()
  for study in $STUDIES; do
    # SPLIT=n: the study's variants dealt round-robin into n groups, one process per group
    mapfile -t groups < <("$PY" -c "from a2d2c.study.runner import load_study
v = list(load_study('$study').variants); n = ${SPLIT:-1}
print(*(' '.join(v[i::n]) for i in range(min(n, len(v)))), sep='\n')")
    for seed in ${SEEDS:-0 1 2}; do
      for gi in "${!groups[@]}"; do
        # shellcheck disable=SC2086
        timeout "${STUDY_S:-270}" "$PY" -m a2d2c study "$study" --seeds "$seed" \
          --only ${groups[$gi]} --set train.device=cuda --runs /tmp/gpu_runs \
          --results "$PWD/results/cuda" > "/tmp/study_${study}_${seed}_${gi}.log" 2>&1 &
        pids+=($!)
      done
    done
  done
  wait "${pids[@]}"
  tail -n 3 /tmp/study_*.log > "$OUT/studies.txt"
  tar czf "$OUT/studies.tgz" -C "$PWD" results/cuda 2>/dev/null
  cat /tmp/study_*.log > "$OUT/studies.log"
  ls results/cuda/* | head -100
fi
echo "== done"
