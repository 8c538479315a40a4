#!/usr/bin/env bash
# Record the reference runs on a lent 2-GPU machine and pack them for the trip back.
# Usage: bash scripts/gpu_record_runs.sh OUT_DIR [RUN ...]   (default: every run below)
set -uo pipefail
out=${1:?out dir}; shift
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(fixed-2gpu pathologies-2gpu switch-bank-index switch-tie-eager switch-work-order switch-loader-wait)
mkdir -p "$out" /tmp/runs
export PYTHONUNBUFFERED=1
flags_for() {
  case "$1" in
    fixed-2gpu) echo "" ;;
    pathologies-2gpu) echo "--pathologies all" ;;
    switch-bank-index) echo "--bank-access index" ;;
    switch-tie-eager) echo "--tie-copy eager" ;;
    switch-work-order|switch-work-order-repeat) echo "--work-order last-first" ;;
    switch-big-first) echo "--work-order big-first" ;;
    switch-loader-wait) echo "--no-prefetch --loader-wait-step 6" ;;
    fixed-4gpu) echo "" ;;
    pathologies-4gpu) echo "--pathologies all" ;;
  esac
}
for run in "${runs[@]}"; do
  gpus=2; [[ $run == *4gpu ]] && gpus=4
  start=$(date +%s)
  # shellcheck disable=SC2046
  python3 cli.py profile --steps 6-10 --gpus $gpus --preset small --name "$run" --out-dir /tmp/runs ${PROFILE_FLAGS:-} \
      $(flags_for "$run") > "$out/$run.log" 2>&1
  echo "$run rc=$? $(( $(date +%s) - start ))s"
  tail -n 4 "$out/$run.log"
  tar -C /tmp -cf "$out/runs.tar" runs  # after each run: a cut-off call still brings some back
done
du -sh /tmp/runs/* 2>/dev/null
tar -C /tmp -cf "$out/runs.tar" runs
