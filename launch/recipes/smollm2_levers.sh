#!/usr/bin/env bash
# Which levers make a memory that generalises (`make levers-recipe`), on SmolLM2-135M and 2 CPU ranks.
# Every arm starts from the same untrained parts (seed 0) and trains the same number of steps of
# launch/configs/smollm2_levers.json (l=256, ratio 8, LoRA rank 8, bf16, unbiased incremental TBPTT
# S=2, one document of up to 2,048 tokens a step); the arms differ in one lever each:
#   lm              next-token loss on the training books (the paper's objective; the reference arm)
#   distill         KL to the frozen base reading the whole document, instead of the next-token loss
#   ae_then_lm      auto-encoding for the first third of the steps, then the next-token loss
#   distill_facts   next-token loss + distillation, 30% of documents varied fact data
#   recent          distillation with a raw recent window of one segment (uio.recent_tokens=256)
#   sinks           distillation with 4 attention sinks and a raw window of two segments
#                   (uio.sink_tokens=4, recent_tokens=512): [sinks ; memories ; window ; segment];
#                   next to the same reading without memory (the "window" baseline)
#   facts_narrow    next-token loss, 30% of documents one-template pass-key data over the books
#   facts_varied    next-token loss, 30% of documents varied fact data (8 wordings, 5 key kinds, 3 haystacks)
#   decoder_lora    facts_varied with a decoder LoRA (rank 8, q/v) kept near the base by
#                   objective.regularize=1 (KL to the base on each segment read without memory): a
#                   frozen decoder answers held-out wording no better than the base reading it all,
#                   so this is the lever for facts (compare with facts_varied)
# Each arm is evaluated on the held-out books (perplexity of segments 2..T at 4K and 8K tokens),
# on fact retrieval in held-out wording over a held-out haystack (licence texts) at 2K tokens
# (benchmarks/data/facts_held_out_2k.jsonl.gz),
# on reconstruction of held-out segments, and on fluency (a held-out text continued with memory,
# judged by the frozen base reading everything; its own stage, so arms evaluated before it was
# added get it without a new evaluation); the baselines (the decoder without memory,
# StreamingLLM at the K/V budget the memory reads at 8K, full attention) are evaluated once.
# Stages are skipped when their output exists, so an interrupted recipe continues where it
# stopped; stage times go to $OUT/times.tsv. ARMS="lm distill" runs a subset. An arm whose parts are
# committed under $MILESTONES/NAME (release/milestones/levers) is not trained again: another machine
# continues with the arms not yet run.
set -euo pipefail
OUT=${OUT:-runs/levers}
RECIPE=levers-recipe
STEPS=${STEPS:-100}
ARMS=${ARMS:-lm distill ae_then_lm distill_facts recent sinks facts_narrow facts_varied decoder_lora}
FACT_TRAIN_DOCS=${FACT_TRAIN_DOCS:-3000}
AE_SEGMENTS=${AE_SEGMENTS:-32}
EVAL_LENGTHS=${EVAL_LENGTHS:-4096 8192}
EVAL_DOCS=${EVAL_DOCS:-11}  # the held-out books
CONFIG=launch/configs/smollm2_levers.json
MILESTONES=${MILESTONES:-release/milestones/levers}
source "$(dirname "$0")/common.sh"
DATA=$OUT/data
mkdir -p "$DATA"

make_facts() {  # make_facts FILE make-fact-data options...: training records over SmolLM2's tokenizer
    local file=$1; shift
    $PY -m uio_ds make-fact-data --out "$file" --tokenizer models/smollm2 "$@"
}
stage "data: varied facts for training" "$DATA/facts_varied.jsonl" \
    make_facts "$DATA/facts_varied.jsonl" --tokens 512 1024 1792 --documents "$FACT_TRAIN_DOCS" --corpus data/kjv \
    --haystacks books story code --templates train --facts 1 3 --questions 1 2
stage "data: narrow facts for training" "$DATA/facts_narrow.jsonl" \
    make_facts "$DATA/facts_narrow.jsonl" --tokens 512 1024 1792 --documents "$FACT_TRAIN_DOCS" --corpus data/kjv \
    --haystacks books --templates pass_key --key-kinds digits --facts 1 1 --questions 1 1

books='{"path": "data/kjv", "split": "train", "name": "kjv", "weight": 0.7}'
mix() { echo "data.sources=[$books, {\"path\": \"$DATA/$1.jsonl\", \"text_field\": \"prompt\", \"completion_field\": \"completion\", \"eos\": false, \"name\": \"$1\", \"weight\": 0.3}]"; }
train() { ds_train "$CONFIG" "$OUT/$1" steps="$2" "${@:3}"; }

arm() {  # arm NAME: train it (its lever as overrides)
    local name=$1 run=$OUT/$1
    case $name in
        lm) train lm "$STEPS" ;;
        distill) train distill "$STEPS" objective.lm=0 objective.distill=1 ;;
        ae_then_lm)
            local first=$(( STEPS / 3 ))
            stage "ae_then_lm: auto-encoding ($first steps)" "$OUT/ae_warm/final/uio_config.json" \
                train ae_warm "$first" data.autoencode_tokens=256 data.max_tokens=null data.documents_per_step=4
            train ae_then_lm $(( STEPS - first )) init_from="$OUT/ae_warm/final" ;;
        distill_facts) train distill_facts "$STEPS" objective.distill=1 "$(mix facts_varied)" ;;
        recent) train recent "$STEPS" objective.lm=0 objective.distill=1 uio.recent_tokens=256 ;;
        sinks) train sinks "$STEPS" objective.lm=0 objective.distill=1 uio.recent_tokens=512 uio.sink_tokens=4 ;;
        facts_narrow) train facts_narrow "$STEPS" "$(mix facts_narrow)" ;;
        facts_varied) train facts_varied "$STEPS" "$(mix facts_varied)" ;;
        decoder_lora) train decoder_lora "$STEPS" objective.regularize=1 "$(mix facts_varied)" \
            'uio.decoder_lora={"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}' ;;
        *) echo "unknown arm $name"; exit 2 ;;
    esac
}

# StreamingLLM reads at most what the memory reads at 8K tokens, 31 memories of 32 slots + a segment
# (1,248 K/V entries): its sinks and window W plus the chunk it reads at once, (W - 4) / 4 tokens.
STREAM_WINDOW=$(( (4 * (31 * 32 + 256) + 4) / 5 ))
# The recent arm's raw segment takes the place of 8 memories (256 / 32 slots): it reads the 23 most
# recent memories, so at 8K it reads as many K/V entries as the others (23 * 32 + 256 + 256 = 1,248).
RECENT_MEMORY_WINDOW=$(( 31 - 256 / 32 ))
# The sinks arm reads 4 sinks and two raw segments: the 14 most recent memories fill the rest
# (4 + 14 * 32 + 512 + 256 = 1,220 K/V entries). The window baseline is the same reading without
# memory (memory_window 0: StreamingLLM at UIO's layout), so sinks - window is what memory adds.
SINKS_MEMORY_WINDOW=$(( (31 * 32 + 256 - 4 - 512 - 256) / 32 ))
WINDOW_OPTS=(--memory-window 0 --recent-tokens 512 --sink-tokens 4)
EVAL_OPTS=()
evaluate() {  # evaluate PARTS NAME METHODS...
    local parts=$1 name=$2; shift 2
    local uio=(--uio "$parts") tasks=(perplexity facts autoencode)
    # the baselines run in the arms' dtype (bf16), so every row of the table is computed alike
    if [[ $parts == none ]]; then uio=(--segment-length 256 --compression-ratio 8 --dtype bfloat16); tasks=(perplexity facts); fi
    # shellcheck disable=SC2086  # the lengths are a list
    $PY launch/eval.py --model models/smollm2 "${uio[@]}" --data data/kjv --split eval --tasks "${tasks[@]}" \
        --lengths $EVAL_LENGTHS --max-doc-tokens 8192 --max-documents "$EVAL_DOCS" \
        --facts "$HELD_OUT_FACTS" --ae-segments "$AE_SEGMENTS" --streaming-window "$STREAM_WINDOW" \
        --methods "$@" --out "$RESULTS" --name "$name" "${EVAL_OPTS[@]}"
}
stage "baselines: no memory, StreamingLLM at the memory's budget, full attention" \
    "$RESULTS/smollm2_levers_baselines.json" evaluate none smollm2_levers_baselines no_memory streaming full
fluency() {  # fluency PARTS NAME METHODS...
    local parts=$1 name=$2; shift 2
    local uio=(--uio "$parts")
    if [[ $parts == none ]]; then uio=(--segment-length 256 --compression-ratio 8 --dtype bfloat16); fi
    $PY launch/eval.py --model models/smollm2 "${uio[@]}" --data data/kjv --split eval --tasks fluency \
        --max-documents "$EVAL_DOCS" --fluency-prompt 2000 --fluency-tokens 64 \
        --streaming-window "$STREAM_WINDOW" --methods "$@" --out "$RESULTS" --name "$name" "${EVAL_OPTS[@]}"
}
# The first baselines were evaluated on held-out fact records written on that machine (its
# licence files are a haystack), which no other machine writes alike: the decoder without memory
# on the committed records again, so an arm evaluated on them is measured against it on the same
# records (levers_summary: over_no_memory). Baselines that carry a records digest used them already.
if ! $PY -c "import json, sys; sys.exit(not json.load(open(sys.argv[1]))['facts'].get('records_sha1'))" \
        "$RESULTS/smollm2_levers_baselines.json"; then
    stage "baselines: facts without memory on the committed records" "$RESULTS/smollm2_levers_baselines_facts.json" \
        $PY launch/eval.py --model models/smollm2 --segment-length 256 --compression-ratio 8 --dtype bfloat16 \
        --data data/kjv --split eval --tasks facts --facts "$HELD_OUT_FACTS" --methods no_memory \
        --out "$RESULTS" --name smollm2_levers_baselines_facts
fi
stage "baselines: fluency" "$RESULTS/smollm2_levers_baselines_fluency.json" \
    fluency none smollm2_levers_baselines_fluency no_memory streaming full
EVAL_OPTS=("${WINDOW_OPTS[@]}")
stage "baselines: the sinks arm's raw reading without memory" "$RESULTS/smollm2_levers_window.json" \
    evaluate none smollm2_levers_window uio
stage "baselines: the window's fluency" "$RESULTS/smollm2_levers_window_fluency.json" \
    fluency none smollm2_levers_window_fluency uio

for name in $ARMS; do
    parts=$OUT/$name/final
    [[ -e $MILESTONES/$name/uio_config.json ]] && parts=$MILESTONES/$name
    stage "arm $name ($STEPS steps)" "$parts/uio_config.json" arm "$name"
    EVAL_OPTS=()
    [[ $name == recent ]] && EVAL_OPTS=(--memory-window "$RECENT_MEMORY_WINDOW")
    [[ $name == sinks ]] && EVAL_OPTS=(--memory-window "$SINKS_MEMORY_WINDOW")
    # a decoder LoRA changes the decoder without memory too: measure it beside the memory
    methods=(uio)
    [[ $name == decoder_lora ]] && methods=(uio no_memory)
    stage "arm $name: evaluation" "$RESULTS/smollm2_levers_$name.json" \
        evaluate "$parts" "smollm2_levers_$name" "${methods[@]}"
    stage "arm $name: fluency" "$RESULTS/smollm2_levers_${name}_fluency.json" \
        fluency "$parts" "smollm2_levers_${name}_fluency" uio
done
stamp "done: $RESULTS/smollm2_levers_*.json"
