#!/usr/bin/env bash
# One command that checks the suite on a machine with one CUDA GPU (no internet needed once
# .venv exists): `hkd bench --device cuda` for configs/default.yaml and configs/cifar10.yaml,
# then the default `all` under Snakemake on the GPU. Each part has its own time limit, and
# the whole stays within GPU_CHECK_SECONDS (default 470 s: under 8 minutes). It runs in a
# scratch copy of the working tree, so the checkout's results/, reports/ and benchmarks/
# stay as they are. Everything it measured goes to one folder, summary.md on top; the
# summary is rewritten after every part, so it says what finished and what ran out of time
# even when the check itself is cut off.
#
# Usage: bash workflow/scripts/gpu_check.sh [OUTPUT_DIR]   (default: $OUT, else gpu_check_out)
# Settings (environment): GPU_CHECK_SECONDS (470), BENCH_DEFAULT_SECONDS (120),
# BENCH_CIFAR10_SECONDS (160), BENCH_STEPS (3), KEEP_SCRATCH=1 keeps the scratch copy.
set -uo pipefail

OUT_DIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT_DIR" || { echo "gpu_check: cannot create the output folder $OUT_DIR" >&2; exit 1; }
OUT_DIR=$(cd "$OUT_DIR" && pwd)
cd "$(dirname "$0")/../.." || exit 1
REPO=$(pwd)
PY=$REPO/.venv/bin/python
CORES=$(nproc)
BUDGET=${GPU_CHECK_SECONDS:-470}
RESERVE=25 # seconds kept for the last summary, copying logs and a timed-out part's kill grace
STEPS=${BENCH_STEPS:-3}
SCRATCH=""
SAMPLER_PID=""
STARTED_AT=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
SNAKEMAKE_CMD="snakemake all --cores $CORES --config device=cuda --keep-going"
PART_NAMES=()
PART_STATES=()
PART_SECONDS=()

say() { echo "gpu_check: $*" >&2; }

time_left() { echo $((BUDGET - RESERVE - SECONDS)); }

record() { # part name, what happened, seconds it took
  PART_NAMES+=("$1")
  PART_STATES+=("$2")
  PART_SECONDS+=("$3")
  say "$1: $2 (${3} s)"
}

# run_part NAME CAP COMMAND...: COMMAND under a time limit of CAP seconds or what is left of
# the budget, its output in OUT_DIR/NAME.log; returns COMMAND's exit status.
run_part() {
  local name=$1 cap=$2 left limit started rc state
  shift 2
  left=$(time_left)
  limit=$((cap < left ? cap : left))
  if ((limit < 20)); then
    record "$name" "skipped: no time left" 0
    return 125
  fi
  say "$name: starting, at most ${limit} s (log: $OUT_DIR/$name.log)"
  started=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  if ((rc == 0)); then
    state="finished"
  elif ((rc == 124 || (rc == 137 && SECONDS - started >= limit))); then
    state="ran out of time (limit ${limit} s)"
  else
    state="failed (exit status $rc)"
  fi
  record "$name" "$state" $((SECONDS - started))
  write_summary
  return "$rc"
}

venv_works() {
  [ -x "$PY" ] && "$PY" -c 'import torch, snakemake, hkd' >/dev/null 2>&1
}

# the working tree without run outputs, the environment or this check's own output
make_scratch() {
  SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/hkd-gpu-check.XXXXXX") || return 1
  local excludes=(--exclude=./results --exclude=./reports --exclude=./resources --exclude=./.venv
    --exclude=./.git --exclude=./.snakemake --exclude=./.dvc/cache --exclude=./gpu_check_out)
  case $OUT_DIR in "$REPO"/*) excludes+=("--exclude=./${OUT_DIR#"$REPO"/}") ;; esac
  tar -C "$REPO" "${excludes[@]}" -cf - . | tar -C "$SCRATCH" -xf -
}

# configs/cifar10.yaml with random VGG16 features as the LPIPS backbone: a bench measures
# cost, not values, and the real weights would have to be downloaded (argument: the scratch copy)
PREPARE_CIFAR10='
import sys
from pathlib import Path

import torch
import torchvision

scratch = Path(sys.argv[1])
vgg = torchvision.models.vgg16(weights=None).state_dict()
weights = scratch / "vgg16-random-features.pth"
torch.save({k: v for k, v in vgg.items() if k.startswith("features.")}, weights)
(scratch / "configs" / "gpu_check_cifar10.yaml").write_text(
    f"extends: cifar10.yaml\nhkd:\n  perceptual_weights: {weights}\n"
)
print(f"wrote {scratch}/configs/gpu_check_cifar10.yaml")
'

# fails (exit 1) when torch sees no CUDA GPU; prints what it sees
TORCH_CUDA='
import sys, torch
print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}")
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device (a CPU build of torch, or a driver older than its CUDA)")
p = torch.cuda.get_device_properties(0)
print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
'

start_gpu_sampler() {
  command -v nvidia-smi >/dev/null || return 0
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,memory.total --format=csv -l 5 \
    >"$OUT_DIR/gpu-usage.csv" 2>/dev/null &
  SAMPLER_PID=$!
}

# the run's per-stage wall times, Snakemake's per-rule benchmarks, rule logs and config
collect_run_outputs() {
  local logs=$SCRATCH/results/default/logs
  if [ -z "$SCRATCH" ] || [ ! -d "$logs" ]; then return 0; fi
  mkdir -p "$OUT_DIR/run"
  cp -r "$logs" "$OUT_DIR/run/" 2>/dev/null
  cp "$SCRATCH/results/default/config.yaml" "$OUT_DIR/run/" 2>/dev/null
  return 0
}

# markdown table of a bench JSON; the `bench:` lines of its log when it has none
bench_section() {
  local title=$1 json=$2 log=$3
  echo "## $title"
  echo
  if [ -s "$json" ] && [ -x "$PY" ]; then
    "$PY" - "$json" <<'EOF'
import json, sys

b = json.load(open(sys.argv[1]))
print(f"{b['device']}, torch {b['torch']}, precision {b['precision']}, cost digest {b['cost_digest']}"
      f" (`hkd plan` reads benchmarks/{b['cost_digest']}-cuda.json)\n")
print("| workload | rate | first call | peak GPU memory | peak RSS |")
print("|---|---|---|---|---|")
for name, w in b["workloads"].items():
    gpu = f"{w['peak_gpu_bytes'] / 2**30:.2f} GiB" if w.get("peak_gpu_bytes") else "n/a"
    print(f"| {name} | {w['rate']:.1f} {w['unit']} | {w['first_call_seconds']:.1f} s | {gpu} "
          f"| {w['peak_rss_bytes'] / 2**30:.2f} GiB |")
EOF
  elif [ -s "$log" ] && grep -q '^bench: .*: ' "$log"; then
    echo "No JSON (the bench did not finish); the workloads it measured:"
    echo
    grep '^bench: .*: ' "$log" | sed 's/^/    /'
  elif [ -e "$log" ]; then
    echo "No measurement (see $(basename "$log"))."
  else
    echo "Not run."
  fi
  echo
}

timings_table() {
  local folder=$OUT_DIR/run/logs/timings
  if [ ! -d "$folder" ] || [ ! -x "$PY" ]; then
    echo "No stage finished (no timings)."
    return
  fi
  "$PY" - "$folder" <<'EOF'
import json, sys
from pathlib import Path

rows = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*.json"))]
print("| stage | seconds | finished | compiled paths |")
print("|---|---|---|---|")
for t in sorted(rows, key=lambda t: t.get("finished", "")):
    compiled = ", ".join(k for k, d in t.get("compiled", {}).items() if d.get("compiled")) or "none"
    print(f"| {t.get('stage')} | {t.get('seconds')} | {t.get('finished')} | {compiled} |")
EOF
}

gpu_usage_line() {
  local csv=$OUT_DIR/gpu-usage.csv
  [ -s "$csv" ] || return 0
  awk -F', ' 'NR > 1 { u = $2 + 0; m = $3 + 0; if (u > mu) mu = u; if (m > mm) mm = m; n++ }
    END { if (n) printf "GPU use, sampled every 5 s (%d samples): up to %d %% utilisation, %d MiB memory\n", n, mu, mm }' "$csv"
}

write_summary() {
  local i log=$OUT_DIR/snakemake-all.log
  {
    echo "# GPU check"
    echo
    echo "Started $STARTED_AT on ${HOSTNAME:-$(uname -n)}, $CORES cores; summary written $(date -u '+%H:%M:%S UTC'),"
    echo "${SECONDS} s in, budget ${BUDGET} s. Produced by workflow/scripts/gpu_check.sh."
    echo
    if command -v nvidia-smi >/dev/null; then
      timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
    fi
    [ -s "$OUT_DIR/torch-cuda.log" ] && sed 's/^/    /' "$OUT_DIR/torch-cuda.log"
    echo
    echo "| part | result | seconds |"
    echo "|---|---|---|"
    for i in "${!PART_NAMES[@]}"; do
      echo "| ${PART_NAMES[$i]} | ${PART_STATES[$i]} | ${PART_SECONDS[$i]} |"
    done
    echo
    gpu_usage_line
    echo
    bench_section "hkd bench: configs/default.yaml" "$OUT_DIR/bench-default-cuda.json" "$OUT_DIR/bench-default.log"
    bench_section "hkd bench: configs/cifar10.yaml (random VGG16 features for LPIPS)" \
      "$OUT_DIR/bench-cifar10-cuda.json" "$OUT_DIR/bench-cifar10.log"
    echo "## Default \`all\` on the GPU"
    echo
    echo "\`$SNAKEMAKE_CMD\` in a scratch copy of the working tree."
    if [ -s "$log" ]; then
      grep -E '[0-9]+ of [0-9]+ steps' "$log" | tail -n 1 | sed 's/^/Progress: /'
      echo
      timings_table
      echo
      echo "Last 40 lines of its log (all of it: snakemake-all.log; rule logs: run/logs/):"
      echo
      echo '```'
      tail -n 40 "$log"
      echo '```'
    else
      echo "Not run."
    fi
  } >"$OUT_DIR/summary.md.tmp" && mv "$OUT_DIR/summary.md.tmp" "$OUT_DIR/summary.md"
}

# shellcheck disable=SC2317  # run by the EXIT trap
finish() {
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
  collect_run_outputs
  write_summary
  if [ -n "$SCRATCH" ] && [ "${KEEP_SCRATCH:-0}" != 1 ]; then rm -rf "$SCRATCH"; fi
  say "done in ${SECONDS} s; summary: $OUT_DIR/summary.md"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  record "$1" "$2" 0
  exit 1
}

write_summary
run_part nvidia-smi 30 nvidia-smi

if ! venv_works; then
  say "no working .venv: creating it with workflow/scripts/install.sh (needs pip to reach its index)"
  run_part install 300 env PIP_RETRIES=1 bash workflow/scripts/install.sh
  venv_works || fail "environment" "no usable .venv and install.sh could not make one (see install.log; \
is pip's index reachable from this machine?): copy a .venv built for this machine or run install.sh where pip works"
fi

run_part torch-cuda 120 "$PY" -c "$TORCH_CUDA" ||
  fail "environment" "torch cannot use a CUDA GPU here (see torch-cuda.log)"

make_scratch || fail "scratch copy" "could not copy the working tree to a scratch folder"
cd "$SCRATCH" || exit 1
export PYTHONPATH=$SCRATCH/src TQDM_DISABLE=1 DVC_NO_ANALYTICS=1
start_gpu_sampler

run_part bench-default "${BENCH_DEFAULT_SECONDS:-120}" "$PY" -m hkd bench --config configs/default.yaml \
  --device cuda --steps "$STEPS" --threads "$CORES" --out "$OUT_DIR/bench-default-cuda.json"

if run_part prepare-cifar10 60 "$PY" -c "$PREPARE_CIFAR10" "$SCRATCH"; then
  run_part bench-cifar10 "${BENCH_CIFAR10_SECONDS:-160}" "$PY" -m hkd bench \
    --config configs/gpu_check_cifar10.yaml --device cuda --steps "$STEPS" --threads "$CORES" \
    --out "$OUT_DIR/bench-cifar10-cuda.json"
fi

# shellcheck disable=SC2086  # the command's words
run_part snakemake-all "$(time_left)" "$PY" -m $SNAKEMAKE_CMD
collect_run_outputs

failed=0
for state in "${PART_STATES[@]}"; do
  case $state in failed*) failed=1 ;; esac
done
exit "$failed"
