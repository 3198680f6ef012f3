#!/usr/bin/env bash
# The GPU measurements of the rollout-speed work, prepared to run in one go (at most ~8 minutes on an H200).
#
#     bash bench/gpu_check.sh [RESULTS_DIR]      # on a CUDA machine, from the repository root
#
# Each line runs bench/gpu_memory.py in its own process (a fresh peak-memory count and, with --emulate-24gb,
# a process capped at 24 GiB) with random DeepSeek-Coder weights, and writes its rows as JSON to
# RESULTS_DIR (default bench/results/gpu_check_<date>); a `timeout` bounds each, so a slow one costs
# its own numbers only. In order of what matters most:
#   1. 1.3B, the trainer's defaults (merged sampler, 32 rollouts generated at once, gradient
#      checkpointing), 1024 new tokens, capped at 24 GiB: seconds per step (target <= 15 s), peak
#      allocated (target <= 16 GiB), and the sampler's mean |log p_generate - log p_train| per token;
#   2. 1.3B, the path before (the policy samples through 4-bit and LoRA kernels, 2 x 16, no
#      checkpointing) against the defaults, both at 256 new tokens: the generated tokens/s ratio;
#   3. 6.7B under the 24 GiB cap, one step at 256 new tokens, sampled by the policy 8 at a time
#      (a bf16 copy of 6.7B does not fit beside the rest: bench/gpu_memory.py --budget).
# Then it prints the ratio of 2. bitsandbytes is not in the lent machine's image: carry its wheel in
# .whl/ (bench/README.md says how to download it); it is installed into /tmp/site here.
set -u
cd "$(dirname "$0")/.."
if ls .whl/bitsandbytes-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import bitsandbytes, torch; assert torch.cuda.is_available()" 2>/dev/null \
    || { echo "gpu_check: needs a CUDA GPU and bitsandbytes (.whl/bitsandbytes-*.whl)" >&2; exit 2; }
results=${1:-bench/results/gpu_check_$(date +%F)}
mkdir -p "$results"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$results/device.txt"
python3 -c "import torch, transformers, peft, bitsandbytes as b; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', b.__version__)" >> "$results/device.txt"
cat "$results/device.txt"
before='--trainer-args=--sampler policy --gen-batch-size 16 --no-gradient-checkpointing'
run() {  # seconds, name, gpu_memory.py arguments...
    local limit=$1 name=$2
    shift 2
    echo "== $name: bench/gpu_memory.py $*"
    timeout "$limit" python3 bench/gpu_memory.py --json "$results/$name.json" "$@" 2>&1 | grep -v "^Step\|it/s\]$" | tail -12
}
run 130 defaults_1024_24gb --arch 1.3b --max-new-tokens 1024 --emulate-24gb
run 140 before_256 --arch 1.3b --max-new-tokens 256 "$before"
run 60 defaults_256 --arch 1.3b --max-new-tokens 256
run 150 6.7b_policy_256_24gb --arch 6.7b --steps 1 --max-new-tokens 256 --emulate-24gb \
    '--trainer-args=--sampler policy --gen-batch-size 8'
python3 - "$results" <<'EOF'
import json, os, sys
rows = {}
for name in sorted(os.listdir(sys.argv[1])):
    if name.endswith(".json"):
        rows[name[:-5]] = json.load(open(os.path.join(sys.argv[1], name)))[0]
for name, r in rows.items():
    print(f"{name:<24} {r.get('status', 'timeout?'):>6}  s/step {r.get('s_per_step', float('nan')):6.1f}  "
          f"gen tok/s {r.get('gen_tokens_per_s', float('nan')):7.0f}  peak alloc {r.get('peak_allocated_gib', float('nan')):5.2f} GiB  "
          f"sampler gap {r.get('sampler_logp_gap', float('nan')):.4f}")
before, after = rows.get("before_256", {}), rows.get("defaults_256", {})
if "gen_tokens_per_s" in before and "gen_tokens_per_s" in after:
    print(f"generated tokens/s, defaults / before, 1.3B at 256 new tokens: {after['gen_tokens_per_s'] / before['gen_tokens_per_s']:.1f}x "
          f"(target >= 10x); seconds per step {before['s_per_step'] / after['s_per_step']:.1f}x")
EOF
