#!/usr/bin/env bash
# The paper's headline result (Table 1, Fig. 2, Table 6) in miniature on a CPU: PoSE ≈ Full-length ≫ PI-only ≫ Original.
#
#   bash benchmarks/reproduce.sh           # ~45 min on 2 CPU cores -> runs/repro/, tables + plot into BENCHMARKS.md
#   bash benchmarks/reproduce.sh --quick   # ~3 minutes -> runs/repro-quick/: runs every step, proves nothing
#
# 1. pre-train a small LLaMA from scratch at window L_c (--method plain) on Python's standard library plus
#    passkey documents that fit the window (benchmarks/repro_data.py);
# 2. from that base, with the same steps, batch and data: PoSE to L_t = 8 L_c (training window L_c),
#    full-length fine-tuning at L_t, RandPos; PoSE again with NTK and YaRN (the paper's revised YaRN);
# 3. evaluate Original (no scaling), PI-only (linear x8, no training) and the five fine-tunes on held-out
#    files: sliding-window perplexity and passkey accuracy at L_c, 2 L_c, ..., L_t;
# 4. benchmarks/repro_report.py writes the tables (and the plot, if matplotlib is installed).
#
# Every step is a plain train.py / evaluate.py call, printed before it runs and logged to OUT/commands.sh.
# A step whose output exists is skipped, and a killed training resumes (--resume), so rerunning continues.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}  # the interpreter with torch installed; tests/test_reproduce.py passes its own
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

if [[ "${1:-}" == "--quick" ]]; then
    shift
    OUT=${1:-runs/repro-quick}
    LC=128 LT=256 DATA_BYTES=600000
    PRE_STEPS=8 PRE_BATCH=4 FT_STEPS=2 FT_BATCH=2 DOCS=2 STRIDE=128 TRIALS=2
else
    OUT=${1:-runs/repro}
    LC=128 LT=1024 DATA_BYTES=12000000
    PRE_STEPS=2000 PRE_BATCH=16 FT_STEPS=150 FT_BATCH=8 DOCS=12 STRIDE=256 TRIALS=30
fi
PRE_LR=3e-3 FT_LR=1e-3 SEED=0
PASSKEY=0.5  # share of passkey documents in pre-training (0.25 gave a weaker base: BENCHMARKS.md)
ALPHA=$((LT / LC))
LENGTHS=$(l=$LC; while ((l <= LT)); do printf '%s ' $l; l=$((l * 2)); done)
mkdir -p "$OUT/logs" "$OUT/results"
: >> "$OUT/times.tsv"

step() {  # step NAME OUTPUT COMMAND...: run COMMAND unless OUTPUT exists; log it, time it
    local name=$1 output=$2; shift 2
    local shown=("$@")
    [[ "${shown[0]}" == "$PYTHON" ]] && shown[0]=python  # logged as `python ...`, whichever interpreter ran it
    echo "${shown[*]}" >> "$OUT/commands.sh"
    if [[ -e "$output" ]]; then echo "== $name: $output exists, skipped"; return; fi
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" > "$OUT/logs/$name.log" 2>&1 || { echo "error: step $name failed, see $OUT/logs/$name.log" >&2; tail -5 "$OUT/logs/$name.log" >&2; exit 1; }
    printf '%s\t%s\n' "$name" $((SECONDS - t0)) >> "$OUT/times.tsv"
}

: > "$OUT/commands.sh"
step data "$OUT/data/eval.jsonl" \
    "$PYTHON" benchmarks/repro_data.py --out "$OUT/data" --window $LC --target $LT --max-bytes $DATA_BYTES --seed $SEED \
        --passkey-fraction $PASSKEY
step base "$OUT/base/final" \
    "$PYTHON" train.py --preset tiny --data "$OUT/data/pretrain.jsonl" --method plain --window $LC \
        --steps $PRE_STEPS --batch-size $PRE_BATCH --lr $PRE_LR --warmup 100 --seed $SEED --save-every 500 --log-every 50 --resume \
        --out "$OUT/base"

finetune() {  # finetune NAME METHOD ROPE: same base, steps, batch, learning rate and documents for every method
    step "$1" "$OUT/$1/final" \
        "$PYTHON" train.py --model "$OUT/base/final" --data "$OUT/data/finetune.jsonl" --method "$2" --rope "$3" \
            --window $LC --target $LT --steps $FT_STEPS --batch-size $FT_BATCH --lr $FT_LR --warmup 10 --seed $SEED \
            --save-every 500 --resume --out "$OUT/$1"
}
finetune pose pose linear
finetune full full linear
finetune randpos randpos linear
finetune pose-ntk pose ntk
finetune pose-yarn pose yarn-revised  # the paper's YaRN (authors' README: the revised version)

evaluate() {  # evaluate NAME MODEL [--rope ...]: perplexity and passkey at L_c, 2 L_c, ..., L_t
    local name=$1 model=$2; shift 2
    step "$name.ppl" "$OUT/results/$name.ppl.json" \
        "$PYTHON" evaluate.py ppl --model "$model" "$@" --data "$OUT/data/eval.jsonl" --lengths $LENGTHS \
            --stride $STRIDE --docs $DOCS --label "$name" --out "$OUT/results/$name.ppl.json"
    step "$name.passkey" "$OUT/results/$name.passkey.json" \
        "$PYTHON" evaluate.py passkey --model "$model" "$@" --lengths $LENGTHS --trials $TRIALS --seed $SEED \
            --label "$name" --out "$OUT/results/$name.passkey.json"
}
evaluate original "$OUT/base/final" --rope none
evaluate pi-only "$OUT/base/final" --rope linear --factor $ALPHA
for name in full randpos pose pose-ntk pose-yarn; do
    evaluate "$name" "$OUT/$name/final"
done

report=("$PYTHON" benchmarks/repro_report.py "$OUT")
[[ "$OUT" == runs/repro ]] && report+=(--into BENCHMARKS.md --plot benchmarks/reproduce.png)
echo "== report: ${report[*]}"
"${report[@]}"
