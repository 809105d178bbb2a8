#!/usr/bin/env bash
# The general memory release for SmolLM2-135M (`make memory-recipe`): release/smollm2-uio.
#   1. the memory: a levers arm (RELEASE_ARM, default sinks: distillation from the base reading
#      everything, with 4 attention sinks and a raw window of two segments; 100 steps on 2 CPU ranks);
#      its parts are taken from release/milestones/levers/ARM when committed there, else trained by
#      the levers recipe;
#   2. the release's reading (4 sinks, the MEMORY_WINDOW most recent memories, a raw window of
#      RECENT_TOKENS and the segment: 1,220 K/V entries at any length) on the held-out books at 4K
#      and 8K tokens (perplexity of segments 2..T, facts in held-out wording over a held-out haystack,
#      fluency), against StreamingLLM at the same K/V budget and the same reading without memory
#      (memory window 0: what the memory adds to its raw window), facts for no memory and full
#      attention (benchmarks/data/facts_held_out_2k.jsonl.gz); their perplexity at 4K and 8K comes
#      from the levers recipe's baselines;
#   3. perplexity at 16K and 32K tokens (the held-out books that long: 4 and 2), the same methods and
#      the decoder without memory; facts at 4K, 8K, 16K and 32K tokens, each in the first half of its
#      prompt, beyond the raw window (benchmarks/data/facts_held_out_long.jsonl.gz), for the memory,
#      StreamingLLM, the decoder without memory and full attention (to 8K), in two stages of about
#      an hour each on 2 CPU cores;
#   4. the release: those parts with that reading as their defaults (every decoder call within
#      SmolLM2's 8,192 positions, so `uio-ds serve` and `chat` never refuse a long conversation), and
#      the card (release/smollm2-uio/README.md, written by hand from the figures
#      `launch/recipes/memory_summary.py` prints).
# Stages are skipped when their output exists, so an interrupted recipe continues where it stopped.
set -euo pipefail
OUT=${OUT:-runs/memory}
RECIPE=memory-recipe
RELEASE_ARM=${RELEASE_ARM:-sinks}
RELEASE=${RELEASE:-release/smollm2-uio}
SINK_TOKENS=${SINK_TOKENS:-4}
MEMORY_WINDOW=${MEMORY_WINDOW:-6}
RECENT_TOKENS=${RECENT_TOKENS:-768}
EVAL_DOCS=${EVAL_DOCS:-11}  # the held-out books
source "$(dirname "$0")/common.sh"

parts=release/milestones/levers/$RELEASE_ARM
if [[ ! -e $parts/uio_config.json || ! -e $RESULTS/smollm2_levers_$RELEASE_ARM.json ]]; then
    stage "1. the $RELEASE_ARM arm of the levers recipe, trained and evaluated" \
        "$RESULTS/smollm2_levers_${RELEASE_ARM}_fluency.json" \
        env ARMS="$RELEASE_ARM" OUT="$OUT/levers" bash "$(dirname "$0")/smollm2_levers.sh"
    [[ -e $parts/uio_config.json ]] || parts=$OUT/levers/$RELEASE_ARM/final
fi

# l = 256 tokens, 32 memory slots a segment: the K/V entries a query reads at most, at any length
BUDGET=$(( SINK_TOKENS + MEMORY_WINDOW * 32 + RECENT_TOKENS + 256 ))
# StreamingLLM's sinks and window W plus the chunk it reads at once, (W - 4) / 4 tokens, within it
STREAM_WINDOW=$(( (4 * BUDGET + 4) / 5 ))
READING=(--memory-window "$MEMORY_WINDOW" --recent-tokens "$RECENT_TOKENS" --sink-tokens "$SINK_TOKENS")
WINDOW=(--memory-window 0 --recent-tokens "$RECENT_TOKENS" --sink-tokens "$SINK_TOKENS")
evaluate() {  # evaluate NAME "TASKS" "LENGTHS" MAX_DOC_TOKENS OPTIONS...
    local name=$1 tasks=$2 lengths=$3 max_doc=$4; shift 4
    # shellcheck disable=SC2086  # the tasks and lengths are lists
    $PY launch/eval.py --model models/smollm2 --uio "$parts" --data data/kjv --split eval --tasks $tasks \
        --lengths $lengths --max-doc-tokens "$max_doc" --max-documents "$EVAL_DOCS" --facts "${FACTS:-$HELD_OUT_FACTS}" \
        --fluency-prompt 2000 --fluency-tokens 64 --streaming-window "$STREAM_WINDOW" \
        --out "$RESULTS" --name "$name" "$@"
}
stage "2. the release's reading at 4K and 8K ($BUDGET K/V entries)" "$RESULTS/smollm2_release_reading.json" \
    evaluate smollm2_release_reading "perplexity facts" "4096 8192" 8192 "${READING[@]}" --methods uio streaming
stage "2. facts: no memory and full attention" "$RESULTS/smollm2_release_baselines.json" \
    evaluate smollm2_release_baselines facts "4096" 8192 --methods no_memory full
stage "2. the same reading without memory" "$RESULTS/smollm2_release_window.json" \
    evaluate smollm2_release_window "perplexity facts" "4096 8192" 8192 "${WINDOW[@]}" --methods uio
stage "2. fluency of the release's reading" "$RESULTS/smollm2_release_reading_fluency.json" \
    evaluate smollm2_release_reading_fluency fluency "4096" 8192 "${READING[@]}" --methods uio streaming
stage "2. fluency without memory" "$RESULTS/smollm2_release_window_fluency.json" \
    evaluate smollm2_release_window_fluency fluency "4096" 8192 "${WINDOW[@]}" --methods uio
stage "3. perplexity at 16K and 32K tokens" "$RESULTS/smollm2_release_long.json" \
    evaluate smollm2_release_long perplexity "16384 32768" 32768 "${READING[@]}" --methods uio no_memory streaming
stage "3. the same reading without memory at 16K and 32K" "$RESULTS/smollm2_release_long_window.json" \
    evaluate smollm2_release_long_window perplexity "16384 32768" 32768 "${WINDOW[@]}" --methods uio
long_facts() { FACTS=$LONG_FACTS evaluate "$@"; }
stage "3. facts at 4K to 32K tokens: the memory" "$RESULTS/smollm2_release_long_facts.json" \
    long_facts smollm2_release_long_facts facts "4096" 32768 "${READING[@]}" --methods uio
stage "3. facts at 4K to 32K tokens: StreamingLLM, no memory, full attention" \
    "$RESULTS/smollm2_release_long_facts_baselines.json" \
    long_facts smollm2_release_long_facts_baselines facts "4096" 32768 "${READING[@]}" --methods streaming no_memory full

stage "4. release: $parts -> $RELEASE" "$RELEASE/uio_config.json" \
    $PY "$(dirname "$0")/release_parts.py" --model models/smollm2 --parts "$parts" --out "$RELEASE" "${READING[@]}"
stamp "done: $RELEASE; figures: $PY launch/recipes/memory_summary.py --arm $RELEASE_ARM"
