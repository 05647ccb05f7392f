#!/usr/bin/env bash
# The GPU run in one go (about 10 minutes on an H100/H200), for a machine that has only its own
# PyTorch, this repository with data/ and tokenizer.model, no network and no package index:
#
#   bash bench/gpu.sh                  # figures to stdout, $OUT/gpu.json and $OUT/gpu.log
#   bash bench/gpu.sh --cpu-dry-run    # the same parts at toy sizes on the CPU (checks the script)
#
# Parts: the CUDA tests (tests/test_cuda.py), the generate, finetune and lora_memory benchmarks
# with --device cuda --bf16 on random stories42M-shaped weights (finetune: one epoch at the
# upstream SST command's shapes, batch 80), and stories15M pre-training on TinyShakespeare, in
# bfloat16 (--amp auto on this GPU) and a shorter run in float16 with the gradient scaler (--amp
# float16, what --amp auto picks on a T4 or V100).
# Every part runs under its own `timeout`; one that fails or runs out of time is recorded and
# the next one starts. Parts that need what the machine may lack (transformers, sentencepiece,
# data files) say so and are skipped or run without the comparison.
set -u
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--cpu-dry-run" ]; then DRY=1; elif [ $# -gt 0 ]; then
    echo "usage: bash bench/gpu.sh [--cpu-dry-run]" >&2; exit 2; fi
PY=${PYTHON:-python}
command -v "$PY" >/dev/null || PY=python3
OUT=${OUT:-$(mktemp -d)}
SCRATCH=$(mktemp -d)  # checkpoints and caches: big files that must not crowd $OUT
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
RECORDS="$SCRATCH/records.jsonl"
: >"$LOG"
: >"$RECORDS"
export MINLLAMA_CACHE="$SCRATCH/cache" PYTHONUNBUFFERED=1

if [ $DRY = 1 ]; then
    DEV=(--device cpu); TEST_DEVICE=cpu
    GEN=(--new-tokens 8 --repeats 1 --batch 2 --prompt-len 8)
    FT=(--train-examples 16 --dev-examples 8 --repeats 1 --batch-size 4 --skip-step --no-transformers)
    LORA=(--batch-size 4 --seq-len 16)
    PRETRAIN=(--preset stories260K --max_seq_len 64 --batch_size 4 --max_steps 5 --train_tokenizer 512 --device cpu)
    FP16_STEPS=3
    LIMITS=(300 300 300 300 300 300)
else
    DEV=(--device cuda --bf16); TEST_DEVICE=cuda
    GEN=(--repeats 3)
    FT=(--train-examples 0 --dev-examples 0 --repeats 1)  # all 8544 training sentences: one upstream epoch
    LORA=()
    PRETRAIN=(--preset stories15M --max_seq_len 256 --batch_size 64 --max_steps 2000 --train_tokenizer 4096 --device cuda)
    FP16_STEPS=200
    LIMITS=(90 80 120 45 200 40)  # seconds: tests, generate, finetune, lora_memory, pretrain, float16 (sum < 10 min)
fi

have() { "$PY" -c "import $1" >/dev/null 2>&1; }
NO_HF=(); have transformers || NO_HF=(--no-transformers)

# part NAME SECONDS COMMAND...: run it time-boxed, its output to stdout and the log, one JSON record.
part() {
    local name=$1 limit=$2; shift 2
    echo; echo "=== $name (at most ${limit}s): $*" | tee -a "$LOG"
    local memlog="$SCRATCH/$name.mem" poller=""
    if command -v nvidia-smi >/dev/null 2>&1; then  # peak GPU memory of the whole device, sampled
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 >"$memlog" 2>/dev/null &
        poller=$!
    fi
    local start end rc
    start=$(date +%s.%N)
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    end=$(date +%s.%N)
    [ -n "$poller" ] && kill "$poller" 2>/dev/null
    local peak
    peak=$(sort -n "$memlog" 2>/dev/null | tail -1)
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "--- $name: ran out of its ${limit}s" | tee -a "$LOG"
    echo "--- $name: exit $rc, $(awk "BEGIN{printf \"%.1f\", $end-$start}")s wall, peak GPU memory ${peak:-n/a} MiB" | tee -a "$LOG"
    printf '{"part": "%s", "exit": %s, "wall_s": %s, "peak_gpu_mib": %s, "limit_s": %s}\n' \
        "$name" "$rc" "$(awk "BEGIN{print $end-$start}")" "${peak:-null}" "$limit" >>"$RECORDS"
}

skip() {  # skip NAME REASON
    echo; echo "=== $1: skipped: $2" | tee -a "$LOG"
    printf '{"part": "%s", "skipped": "%s"}\n' "$1" "$2" >>"$RECORDS"
}

echo "=== machine" | tee -a "$LOG"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
print("modules:", ", ".join(f"{m} {'yes' if importlib.util.find_spec(m) else 'NO'}"
                             for m in ("numpy", "pytest", "sentencepiece", "tokenizers", "gguf", "transformers", "tqdm")))
EOF

if have pytest; then
    part cuda_tests "${LIMITS[0]}" env MINLLAMA_TEST_DEVICE=$TEST_DEVICE "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
else
    part cuda_tests "${LIMITS[0]}" env MINLLAMA_TEST_DEVICE=$TEST_DEVICE "$PY" tests/test_cuda.py
fi

part generate "${LIMITS[1]}" "$PY" bench/generate.py "${DEV[@]}" "${GEN[@]}" "${NO_HF[@]}"

if [ -f data/sst-train.txt ] && have sentencepiece; then
    part finetune_sst_epoch "${LIMITS[2]}" "$PY" bench/finetune.py "${DEV[@]}" "${FT[@]}" "${NO_HF[@]}"
else
    skip finetune_sst_epoch "needs data/sst-train.txt and sentencepiece (tokenizer.model)"
fi

part lora_memory "${LIMITS[3]}" "$PY" bench/lora_memory.py "${DEV[@]}" "${LORA[@]}"

if [ -f data/tinyshakespeare.txt ] && have sentencepiece; then
    part pretrain_stories15M "${LIMITS[4]}" "$PY" run_llama.py --option pretrain --corpus data/tinyshakespeare.txt \
        "${PRETRAIN[@]}" --out_dir "$SCRATCH/pretrain15M"
    part pretrain_stories15M_float16 "${LIMITS[5]}" "$PY" run_llama.py --option pretrain --corpus data/tinyshakespeare.txt \
        "${PRETRAIN[@]}" --max_steps "$FP16_STEPS" --amp float16 --out_dir "$SCRATCH/pretrain15M-float16"
else
    skip pretrain_stories15M "needs data/tinyshakespeare.txt and sentencepiece (--train_tokenizer)"
fi

# Tokens per second of pre-training from its own log lines is the script's business; here the
# shape gives the count: steps x batch x sequence length over the part's wall time.
"$PY" - "$RECORDS" "$OUT/gpu.json" "$DRY" <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, sys, torch
records = [json.loads(line) for line in open(sys.argv[1])]
dry = sys.argv[3] == "1"
tokens = 5 * 4 * 64 if dry else 2000 * 64 * 256
for record in records:
    if record["part"] == "pretrain_stories15M" and record.get("exit") == 0:
        record["tokens_per_s_including_startup"] = round(tokens / record["wall_s"])
summary = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
           "torch": torch.__version__, "dry_run": dry, "parts": records}
temporary = sys.argv[2] + ".tmp"
with open(temporary, "w") as f:
    json.dump(summary, f, indent=1)
os.replace(temporary, sys.argv[2])
print("\n=== summary")
for record in records:
    print(json.dumps(record))
print(f"written: {sys.argv[2]}")
EOF
rm -rf "$SCRATCH"
