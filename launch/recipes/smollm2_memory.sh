#!/usr/bin/env bash
# A memory that carries information on SmolLM2-135M (`make memory-recipe`), on this 2-core CPU:
#   1. auto-encoding (the paper's Table 1): UIO trained on [x ; x] documents of 128-token pieces of
#      the training books, scored on the copy only, so the second segment is rebuilt from the
#      first one's memory; the same budget for the stepwise layout at ratio 8, the appended layout
#      at ratio 8 and the stepwise layout at ratio 32;
#   2. a pass key read through memory, trained from the best auto-encoder of stage 1, evaluated
#      at 500..4,000 tokens with the held-out books as haystack, against the decoder without memory and
#      StreamingLLM in the decoder's window;
#   3. the best auto-encoder of stage 1 trained further (init_from its parts);
#   4. the pass-key parts copied to release/smollm2-uio (what the repository ships);
#   auto-encoders are evaluated on 64 held-out book segments: greedy reconstruction from memory alone
#      (BLEU-4 with sacrebleu, ROUGE-L with rouge-score), the same without memory, and the
#      teacher-forced loss of the text with and without memory.
# Every stage is skipped when its output exists, so an interrupted recipe continues where it
# stopped (a training stage resumes from its last checkpoint). Stage times go to $OUT/times.tsv.
set -euo pipefail
OUT=${OUT:-runs/memory_recipe}
RECIPE=memory-recipe
AE_STEPS=${AE_STEPS:-200}
AE_LONG_STEPS=${AE_LONG_STEPS:-800}
AE_SEGMENTS=${AE_SEGMENTS:-64}
# The auto-encoder that stages 2 and 3 build on: the one stage 1 measured best (appended ratio 8:
# reconstruction loss 2.04 against 2.34 for stepwise after 200 steps; docs/results.md).
BEST_AE=${BEST_AE:-appended_ratio8}
PASSKEY_DOCUMENTS=${PASSKEY_DOCUMENTS:-2000}
PASSKEY_STEPS=${PASSKEY_STEPS:-600}
PASSKEY_TRIALS=${PASSKEY_TRIALS:-5}
PASSKEY_LENGTHS=${PASSKEY_LENGTHS:-500 1000 2000 4000}
# Where stages 2 and 3 start: the best auto-encoder of stage 1. On a new machine, continue from the
# committed parts instead of re-running stage 1:
#   AUTOENCODE=0 AE_INIT=release/milestones/smollm2-ae-appended-ratio8 make memory-recipe
AUTOENCODE=${AUTOENCODE:-1}
AE_INIT=${AE_INIT:-$OUT/ae_$BEST_AE/final}
PASSKEY_INIT=${PASSKEY_INIT:-$AE_INIT}
RELEASE=${RELEASE:-release/smollm2-uio}
source "$(dirname "$0")/common.sh"
train_ae() { ds_train launch/configs/smollm2_autoencode.json "$@"; }  # train_ae RUN_DIR --set overrides...
evaluate_ae() {  # evaluate_ae PARTS NAME
    $PY launch/eval.py --model models/smollm2 --uio "$1" --data data/kjv --split eval --tasks autoencode \
        --ae-segments "$AE_SEGMENTS" --methods uio --out "$RESULTS" --name "$2"
}

declare -A AE_VARIANT=(
    [stepwise_ratio8]="uio.memory_layout=stepwise uio.compression_ratio=8"
    [appended_ratio8]="uio.memory_layout=appended uio.compression_ratio=8"
    [stepwise_ratio32]="uio.memory_layout=stepwise uio.compression_ratio=32"
)
for name in stepwise_ratio8 appended_ratio8 stepwise_ratio32; do
    [[ $AUTOENCODE == 1 ]] || break
    # shellcheck disable=SC2086  # the variant is a list of overrides
    stage "1. auto-encoding $name ($AE_STEPS steps)" "$OUT/ae_$name/final/uio_config.json" \
        train_ae "$OUT/ae_$name" steps="$AE_STEPS" ${AE_VARIANT[$name]}
    stage "1. auto-encoding $name: evaluation" "$RESULTS/smollm2_memory_ae_$name.json" \
        evaluate_ae "$OUT/ae_$name/final" "smollm2_memory_ae_$name"
done

# 2. a pass key through memory: the evaluation's prompt over stretches of the training books, the
#    key at any depth, only the answer scored, the whole memory gradient (unbiased with S above
#    the segment count), starting from the best auto-encoder, with a decoder LoRA that learns to
#    read the memory. Short documents (256..1,010 tokens: the key 0-7 segments back) first: on
#    512..3,035-token documents the answer loss stayed at chance for 77 steps (12 minutes), and on
#    the tiny model the escape from chance came at one distance before it spread to others.
#    Lengths step by 37 and 97 tokens so the answer falls at every offset of a segment.
stage "2. pass-key training documents, 256..1,010 tokens" "$OUT/passkey_short.jsonl" \
    $PY -m uio_ds make-recall-data --kind passkey-books --tokenizer models/smollm2 --corpus data/kjv --split train \
        --tokens $(seq 256 37 1024) --documents "$PASSKEY_DOCUMENTS" --out "$OUT/passkey_short.jsonl"
# shellcheck disable=SC2086  # the variant is a list of overrides
stage "2. pass key with decoder LoRA, short documents ($PASSKEY_STEPS steps)" "$OUT/passkey_short/final/uio_config.json" \
    ds_train launch/configs/smollm2_passkey.json "$OUT/passkey_short" steps="$PASSKEY_STEPS" \
        init_from="$PASSKEY_INIT" ${AE_VARIANT[$BEST_AE]} \
        'data.sources=[{"path": "'"$OUT"'/passkey_short.jsonl", "text_field": "prompt", "completion_field": "completion", "name": "passkey-short"}]'
stage "2. pass key with decoder LoRA, short documents: evaluation" "$RESULTS/smollm2_memory_passkey_short.json" \
    $PY launch/eval.py --model models/smollm2 --uio "$OUT/passkey_short/final" --data data/kjv --split eval \
        --tasks passkey --methods uio no_memory streaming --max-doc-tokens 32768 --passkey-lengths $PASSKEY_LENGTHS \
        --passkey-depths 0.1 0.5 0.9 --passkey-trials "$PASSKEY_TRIALS" --out "$RESULTS" \
        --name smollm2_memory_passkey_short

# shellcheck disable=SC2086
stage "3. auto-encoding $BEST_AE continued ($AE_LONG_STEPS steps)" "$OUT/ae_long/final/uio_config.json" \
    train_ae "$OUT/ae_long" steps="$AE_LONG_STEPS" init_from="$AE_INIT" save_every=100 \
        ${AE_VARIANT[$BEST_AE]}
stage "3. auto-encoding $BEST_AE continued: evaluation" "$RESULTS/smollm2_memory_ae_long.json" \
    evaluate_ae "$OUT/ae_long/final" smollm2_memory_ae_long
# 4. the release: the pass-key parts (kept when the release directory already holds parts)
stage "4. release: $OUT/passkey_short/final -> $RELEASE" "$RELEASE/uio_config.json" \
    cp -r "$OUT/passkey_short/final/." "$RELEASE/"
stamp "done"
