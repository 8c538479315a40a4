#!/usr/bin/env bash
# Record every case of planted_ddp.py on a machine with 2 GPUs and time it with and without its
# plant. Usage: bash tests/programs/record_planted_ddp.sh OUT_DIR
# OUT_DIR gets cases-a.tar and cases-b.tar (<case>/rank{0,1}.pt.trace.json.gz, timing.json and
# the log of each case) and summary.json (median step per case and its difference from `none`).
# EXTRA_FLAGS=--smoke runs the same cases at toy sizes on the CPU (gloo), to try the script.
set -uo pipefail
out=${1:?out dir}
prog=$(dirname "$0")/planted_ddp.py
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
rec=/tmp/planted_ddp
mkdir -p "$out" "$rec"
nvidia-smi -L
python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.nccl.version(),
  torch.cuda.device_count())'

flags_for() {
  case "$1" in
    none|none_repeat) echo "--plant none" ;;
    fsdp2_none) echo "--plant none --parallel fsdp2 --profiled 2" ;;
    tiny) echo "--plant tiny --profiled 2" ;;
    *) echo "--plant $1" ;;
  esac
}
cases_a=(none straggler item pageable)
cases_b=(loader tiny none_repeat fsdp2_none)
for case in "${cases_a[@]}" "${cases_b[@]}"; do
  start=$(date +%s)
  # shellcheck disable=SC2046
  timeout 100 torchrun --standalone --nproc-per-node 2 "$prog" $(flags_for "$case") ${EXTRA_FLAGS:-} \
    --out "$rec/$case" > "$rec/$case.log" 2>&1
  rc=$?
  echo "$case rc=$rc $(( $(date +%s) - start ))s $(du -ch "$rec/$case"/*.gz 2>/dev/null | tail -1)"
  [ $rc -ne 0 ] && tail -n 15 "$rec/$case.log"
done
tar -C "$rec" -cf "$out/cases-a.tar" $(printf '%s ' "${cases_a[@]}" "${cases_a[@]/%/.log}")
tar -C "$rec" -cf "$out/cases-b.tar" $(printf '%s ' "${cases_b[@]}" "${cases_b[@]/%/.log}")
python3 - "$rec" "$out/summary.json" <<'EOF'
import json, sys
from pathlib import Path
rec, target = Path(sys.argv[1]), Path(sys.argv[2])
cases = {p.parent.name: json.loads(p.read_text()) for p in sorted(rec.glob("*/timing.json"))}
base = cases.get("none", {}).get("median_step_ms")
summary = {}
for name, t in cases.items():
    med = t["median_step_ms"]
    summary[name] = {"median_step_ms": med, "torch": t["torch"], "nccl": t["nccl"],
                     "gpu": t["gpu"], "config": t["config"]}
    line = f"{name:12s}"
    for kind in ("unprofiled", "profiled"):
        line += f"  {kind} " + " ".join(f"{ms:7.3f}" for ms in med[kind].values())
        if base:
            effect = {r: ms - base[kind][r] for r, ms in med[kind].items()}
            summary[name].setdefault("effect_ms", {})[kind] = effect
            line += " (" + " ".join(f"{v:+.3f}" for v in effect.values()) + ")"
    print(line)
target.write_text(json.dumps(summary, indent=1))
EOF
ls -la "$out"
