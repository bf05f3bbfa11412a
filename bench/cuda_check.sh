#!/usr/bin/env bash
# The CUDA check: bakeoff select on a tiny kernel, on a machine with a GPU.
#
# Run from the repository root of an installed bakeoff (pip install -e .), on a machine with
# nvcc and a CUDA device; compute-sanitizer too, for the race check:
#
#   bench/cuda_check.sh
#
# It writes a reference (scale y by a, one thread per element) and two candidates: `stride`
# (a grid-stride loop over fewer blocks: correct) and `racy` (reads another warp's
# shared-memory slot with no __syncthreads(): a race that compute-sanitizer's racecheck
# reports even when the result comes out right). Then it runs
#
#   bakeoff select --reference ref.cu --candidate stride.cu --candidate racy.cu --entry scale \
#                  --sandbox local --any-speed --json
#
# and prints the verdict. Expected on a GPU: `stride` correct (and timed), `racy` not (flaky:
# racecheck's hazard; without compute-sanitizer the check is skipped with a note, and the race
# is caught only if it changes a result). Without a device the verdict says "no CUDA device:
# candidates are gated on building only" and names no winner; the script says which it saw.
#
# The bubblewrap sandbox (`local`) is given the machine's /dev/nvidia* (select does that for
# a .cu reference: --gpus); where bubblewrap is not installed the script says so and runs
# with --sandbox unsafe-local instead (these candidates are this script's own code).
#
# Variables: PYTHON (default: .venv/bin/python if there, else python3), OUT (where the verdict
# and the log go; default bench/out).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT="${OUT:-$ROOT/bench/out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/cuda_check.log") 2>&1

echo "== cuda check $(date -u +%FT%TZ)"
command -v nvcc >/dev/null || { echo "nvcc is not on PATH: install the CUDA toolkit"; exit 2; }
nvcc --version | tail -1
if command -v nvidia-smi >/dev/null && nvidia-smi -L; then :; else echo "nvidia-smi sees no GPU"; fi
if command -v compute-sanitizer >/dev/null; then compute-sanitizer --version | head -1
else echo "no compute-sanitizer: the race check is skipped"; fi

if command -v bwrap >/dev/null; then SANDBOX=local; else SANDBOX=unsafe-local; echo "no bwrap: --sandbox unsafe-local"; fi
echo "sandbox: $SANDBOX"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cat > "$WORK/ref.cu" <<'EOF'
__global__ void scale_kernel(int n, float a, float* y) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * y[i];
}

void scale(int n, float a, float* y) {
  float* d = nullptr;
  cudaMalloc(&d, n * sizeof(float));
  cudaMemcpy(d, y, n * sizeof(float), cudaMemcpyHostToDevice);
  scale_kernel<<<(n + 255) / 256, 256>>>(n, a, d);
  cudaMemcpy(y, d, n * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(d);
}
EOF

cat > "$WORK/stride.cu" <<'EOF'
__global__ void scale_kernel(int n, float a, float* y) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) y[i] = a * y[i];
}

void scale(int n, float a, float* y) {
  float* d = nullptr;
  cudaMalloc(&d, n * sizeof(float));
  cudaMemcpy(d, y, n * sizeof(float), cudaMemcpyHostToDevice);
  int blocks = (n + 1023) / 1024;
  scale_kernel<<<blocks < 1024 ? blocks : 1024, 1024>>>(n, a, d);
  cudaMemcpy(y, d, n * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(d);
}
EOF

cat > "$WORK/racy.cu" <<'EOF'
__global__ void scale_kernel(int n, float a, float* y) {
  __shared__ float s[256];
  int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  s[t] = i < n ? y[i] : 0.0f;
  float other = s[(t + 32) % 256];  // another warp's slot, with no __syncthreads(): a race
  if (i < n) y[i] = a * s[t];
  if (i < n && other == -1.0e30f) y[i] += 1.0f;  // keeps the racy read
}

void scale(int n, float a, float* y) {
  float* d = nullptr;
  cudaMalloc(&d, n * sizeof(float));
  cudaMemcpy(d, y, n * sizeof(float), cudaMemcpyHostToDevice);
  scale_kernel<<<(n + 255) / 256, 256>>>(n, a, d);
  cudaMemcpy(y, d, n * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(d);
}
EOF

set +e
"$PYTHON" -m bakeoff select --reference "$WORK/ref.cu" --candidate "$WORK/stride.cu" --candidate "$WORK/racy.cu" \
  --entry scale --sandbox "$SANDBOX" --any-speed --timing-repeats 3 --json > "$OUT/cuda_check.json"
status=$?
set -e
cat "$OUT/cuda_check.json"
echo "bakeoff select exited $status"

"$PYTHON" - "$OUT/cuda_check.json" <<'EOF'
import json, sys

verdict = json.load(open(sys.argv[1]))
rows = {r["candidate"]: r for r in verdict["rows"]}
if "no CUDA device" in verdict["reason"]:
    ok = verdict["winner"] is None and not verdict["correct"]
    print(f"verdict: no CUDA device, build-only gating ({'as expected without a GPU' if ok else 'WRONG: a winner'})")
    sys.exit(0 if ok else 1)
stride, racy = rows.get("stride", {}), rows.get("racy", {})
ok = verdict["winner"] == "stride" and verdict["correct"] == ["stride"] and not racy.get("correct")
print(f"verdict: winner {verdict['winner']}, correct {verdict['correct']}, "
      f"stride speedup {stride.get('speedup')}, racy flaky {racy.get('flaky')} ({racy.get('note', '')})")
print("CUDA check passed" if ok else "CUDA check FAILED: expected stride alone correct")
sys.exit(0 if ok else 1)
EOF
