#!/usr/bin/env bash
# A memory that holds its text (`make fidelity-recipe`), on SmolLM2-135M and 2 CPU ranks. No arm of
# the levers ablation made its memory reconstruct its segment (ROUGE-L 0.07-0.20), and none carried
# a fact from beyond the raw window; fidelity comes first:
#   1. auto-encoding: documents [x ; x] of two 256-token copies, the loss on the copy only, so the
#      decoder (the frozen base, no raw window, no sinks) rebuilds the text from the memory of the
#      first copy alone; continued from the levers ablation's 33-step auto-encoding warm start
#      (release/milestones/levers/ae_warm) for AE_STEPS steps of 4 documents a rank
#      (launch/configs/smollm2_levers.json: ratio 8, LoRA rank 8, lr 1e-3 with a cosine to 0.1);
#   2. reconstruction of 32 held-out segments from their memory alone (ROUGE-L, BLEU-4, and the
#      teacher-forced loss with and without memory), for the warm start and for the parts of step 1.
# Parts committed under $MILESTONES/ae_long are not trained again: another machine continues from
# them (`--set init_from=release/milestones/fidelity/ae_long`). Stages are skipped when their
# output exists, so an interrupted recipe continues where it stopped.
set -euo pipefail
OUT=${OUT:-runs/fidelity}
RECIPE=fidelity-recipe
AE_STEPS=${AE_STEPS:-700}
AE_SEGMENTS=${AE_SEGMENTS:-32}
CONFIG=launch/configs/smollm2_levers.json
WARM=release/milestones/levers/ae_warm
MILESTONES=${MILESTONES:-release/milestones/fidelity}
source "$(dirname "$0")/common.sh"

parts=$MILESTONES/ae_long
if [[ ! -e $parts/uio_config.json ]]; then
    stage "1. auto-encoding from $WARM ($AE_STEPS steps)" "$OUT/ae_long/final/uio_config.json" \
        ds_train "$CONFIG" "$OUT/ae_long" steps="$AE_STEPS" save_every=50 init_from="$WARM" \
        data.autoencode_tokens=256 data.max_tokens=null data.documents_per_step=4
    parts=$OUT/ae_long/final
fi
reconstruct() {  # reconstruct PARTS NAME
    $PY launch/eval.py --model models/smollm2 --uio "$1" --data data/kjv --split eval --tasks autoencode \
        --ae-segments "$AE_SEGMENTS" --methods uio --out "$RESULTS" --name "$2"
}
stage "2. reconstruction: the warm start" "$RESULTS/smollm2_levers_ae_warm_autoencode.json" \
    reconstruct "$WARM" smollm2_levers_ae_warm_autoencode
stage "2. reconstruction: after auto-encoding" "$RESULTS/smollm2_fidelity_ae_long.json" \
    reconstruct "$parts" smollm2_fidelity_ae_long
stamp "done: $parts; reconstruction in $RESULTS/smollm2_fidelity_ae_long.json"
