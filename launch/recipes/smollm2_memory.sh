#!/usr/bin/env bash
# The general memory release for SmolLM2-135M (`make memory-recipe`): release/smollm2-uio.
#   1. the memory: the levers ablation's best arm so far (RELEASE_ARM, default lm: the next-token
#      loss on the training books, launch/configs/smollm2_levers.json, 100 steps on 2 CPU ranks);
#      its parts are taken from release/milestones/levers/ARM when committed there, else trained
#      (the same command as `make levers-recipe` runs for that arm);
#   2. its evaluation against the baselines, as the levers recipe runs it (perplexity of segments
#      2..T of the held-out books at 4K and 8K tokens, facts in held-out wording over a held-out
#      haystack, reconstruction, fluency), skipped where the levers recipe's JSONs exist;
#   3. perplexity at 16K and 32K tokens (the held-out books that long: 4 and 2), against no memory
#      and StreamingLLM at the K/V budget the memory reads at each length;
#   4. the release: those parts with a memory window of MEMORY_WINDOW memories, so every decoder call
#      stays within SmolLM2's 8,192 positions whatever the length (`uio-ds serve` and `chat` never
#      refuse a long conversation), and the card (release/smollm2-uio/README.md, written by hand
#      from the figures the summary prints: `launch/recipes/memory_summary.py`).
# Stages are skipped when their output exists, so an interrupted recipe continues where it stopped.
set -euo pipefail
OUT=${OUT:-runs/memory}
RECIPE=memory-recipe
RELEASE_ARM=${RELEASE_ARM:-lm}
RELEASE=${RELEASE:-release/smollm2-uio}
# 240 memories of 32 slots + a 256-token segment: 7,936 of SmolLM2's 8,192 positions
MEMORY_WINDOW=${MEMORY_WINDOW:-240}
source "$(dirname "$0")/common.sh"

parts=release/milestones/levers/$RELEASE_ARM
if [[ ! -e $parts/uio_config.json || ! -e $RESULTS/smollm2_levers_$RELEASE_ARM.json ]]; then
    stage "1-2. the $RELEASE_ARM arm of the levers recipe, trained and evaluated" \
        "$RESULTS/smollm2_levers_${RELEASE_ARM}_fluency.json" \
        env ARMS="$RELEASE_ARM" OUT="$OUT/levers" bash "$(dirname "$0")/smollm2_levers.sh"
    [[ -e $parts/uio_config.json ]] || parts=$OUT/levers/$RELEASE_ARM/final
fi

# StreamingLLM at what the memory reads at 16K and at 32K: 63 / 127 memories of 32 slots + a segment
# (2,272 / 4,320 K/V entries): its sinks and window W plus the chunk it reads at once, (W - 4) / 4
window_for() { echo $(( (4 * (($1 / 256 - 1) * 32 + 256) + 4) / 5 )); }
long_eval() {  # long_eval NAME LENGTHS STREAM_AT METHODS...
    local name=$1 lengths=$2 at=$3; shift 3
    # shellcheck disable=SC2086  # the lengths are a list
    $PY launch/eval.py --model models/smollm2 --uio "$parts" --data data/kjv --split eval --tasks perplexity \
        --lengths $lengths --max-doc-tokens 32768 --streaming-window "$(window_for "$at")" --methods "$@" \
        --out "$RESULTS" --name "$name"
}
stage "3. perplexity at 16K and 32K tokens" "$RESULTS/smollm2_release_long.json" \
    long_eval smollm2_release_long "16384 32768" 32768 uio no_memory streaming
stage "3. StreamingLLM at the memory's budget at 16K" "$RESULTS/smollm2_release_long_streaming16k.json" \
    long_eval smollm2_release_long_streaming16k 16384 16384 streaming

stage "4. release: $parts -> $RELEASE (memory window $MEMORY_WINDOW)" "$RELEASE/uio_config.json" \
    $PY "$(dirname "$0")/release_parts.py" --model models/smollm2 --parts "$parts" --out "$RELEASE" \
        --memory-window "$MEMORY_WINDOW"
stamp "done: $RELEASE; figures: $PY launch/recipes/memory_summary.py"
