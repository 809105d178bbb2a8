#!/usr/bin/env bash
# The tiny recipe: a trained tiny model that shows memory carrying information across segments
# (`make tiny-recipe`; on this 2-core CPU docs/results.md has the measured stage times).
#   0. data: the tiny Llama's tokenizer (trained on the books), pre-training mixtures, and
#      recall documents as prompt-completion records of exactly 256 tokens (4 segments of 64):
#      the pass key in segment 1, the question and the answer in segment 4;
#   1. pre-train every weight of a tiny Llama (hidden 128, 4 layers) on 128-token windows: digit
#      runs repeated at once (induction first), then books + short recall documents + runs
#      repeated after text, so the frozen decoder reads and copies from its own context;
#   2. freeze it and train UIO memory (l=64, ratio 8) with DeepSpeed on 2 CPU ranks on the recall
#      documents, only the answer scored (prompt-completion loss), the same steps each:
#      2a. unbiased(3) (S = T-1: every memory stays in the reservoir) with the optional decoder
#          LoRA (rank 8, q/v): launch/configs/tiny_recall.json,
#      2b. the same without the decoder LoRA (the paper's frozen decoder),
#      2c. the same as 2a with unbiased(2) (the reservoir keeps 2 of the 3 memories),
#      2d. 2a continued on recall documents of 3 to 6 segments (192..384 tokens; unbiased(5),
#          every memory kept, lr 1e-3): a memory read at one distance only does not carry over
#          to others, so the distances are taught after the key is;
#   3. UIO memory on the books alone (every token scored, unbiased(2), 512-token pieces):
#      perplexity of later segments with and without memory;
#   4. auto-encoding memories ([x ; x] with x a 64-token piece of the books) at ratio 8 and 32;
#   5. evaluation on held-out data (pass key: key in segment 1, asked in segment 3..8; perplexity
#      of the 11 held-out books by segment position, also reading only the last 1 or 4 memories;
#      auto-encoding BLEU-4 / ROUGE-L), then one
#      summary (printed, benchmarks/results/tiny_recipe.json, tiny_recipe.png).
# Every stage is skipped when its output exists (a training stage resumes from its checkpoint);
# stage times go to $OUT/times.tsv.
set -euo pipefail
OUT=${OUT:-runs/tiny_recipe}
RECIPE=tiny-recipe
RECALL_STEPS=${RECALL_STEPS:-800}
BOOKS_STEPS=${BOOKS_STEPS:-300}
AE_STEPS=${AE_STEPS:-1500}
MIXED_STEPS=${MIXED_STEPS:-800}
source "$(dirname "$0")/common.sh"
train() {  # train RUN_DIR --set overrides...
    local run=$1; shift
    ds_train launch/configs/tiny_recall.json "$run" model_path="$OUT/base" "$@"
}
evaluate() { $PY launch/eval.py --model "$OUT/base" --out "$RESULTS" "$@"; }

data() {
    $PY -m uio_ds make-tiny --arch llama --out "$OUT/init" --hidden 128 --layers 4 --heads 4 --kv-heads 2 \
        --vocab-size 1024 --tokenizer-corpus data/kjv
    $PY -m uio_ds make-recall-data --kind copy --out "$OUT/copy.jsonl" --documents 20000 --seed 5
    $PY -m uio_ds make-recall-data --out "$OUT/recall_pretrain.jsonl" --documents 20000 --filler 1 5 --key-at 0 2 --seed 1
    $PY -m uio_ds make-recall-data --kind repeat --out "$OUT/repeat.jsonl" --documents 20000 --seed 2
    $PY -m uio_ds make-recall-data --kind recall-completion --tokenizer "$OUT/init" --tokens 256 \
        --out "$OUT/recall_train.jsonl" --documents 20000 --seed 3
    $PY -m uio_ds make-recall-data --kind recall-completion --tokenizer "$OUT/init" --tokens 192 256 320 384 \
        --out "$OUT/recall_mixed.jsonl" --documents 20000 --seed 6
    $PY -m uio_ds make-recall-data --kind story --out "$OUT/haystack.jsonl" --documents 8 --filler 60 60 --seed 4
    touch "$OUT/data.done"
}
pretrain() {
    $PY launch/pretrain.py --model "$OUT/init" --data "$OUT/copy.jsonl" --out "$OUT/stage1" \
        --window 128 --batch 16 --steps 600 --lr 1e-3
    $PY launch/pretrain.py --model "$OUT/stage1" --data data/kjv "$OUT/recall_pretrain.jsonl" "$OUT/repeat.jsonl" \
        --weights 1 2 2 --out "$OUT/base" --window 128 --batch 16 --steps 900 --lr 1e-3
}
BOOKS='data.sources=[{"path": "data/kjv", "name": "kjv"}]'
RECALL='data.sources=[{"path": "'"$OUT"'/recall_train.jsonl", "text_field": "prompt", "completion_field": "completion", "eos": false, "name": "recall"}]'
PASSKEY=(--data "$OUT/haystack.jsonl" --tasks passkey --passkey-depths 0.0 --passkey-trials 20
         --passkey-lengths 185 249 313 377 441 505)  # 7 tokens before a segment border: the answer ends its segment

stage "0. data and the initial tiny model" "$OUT/data.done" data
stage "1. pre-training the base (induction, then the mixture)" "$OUT/base/config.json" pretrain
stage "2a. UIO recall with decoder LoRA ($RECALL_STEPS steps)" "$OUT/recall/final/uio_config.json" \
    train "$OUT/recall" steps="$RECALL_STEPS" "$RECALL"
stage "2b. UIO recall without decoder LoRA ($RECALL_STEPS steps)" "$OUT/recall_frozen_decoder/final/uio_config.json" \
    train "$OUT/recall_frozen_decoder" steps="$RECALL_STEPS" uio.decoder_lora=null "$RECALL"
stage "2c. UIO recall with decoder LoRA, unbiased(2) ($RECALL_STEPS steps)" "$OUT/recall_unbiased2/final/uio_config.json" \
    train "$OUT/recall_unbiased2" steps="$RECALL_STEPS" "$RECALL" 'algorithm={"name": "unbiased", "window": 2}'
stage "2d. 2a continued on 3-6 segments ($MIXED_STEPS steps)" "$OUT/recall_mixed/final/uio_config.json" \
    train "$OUT/recall_mixed" steps="$MIXED_STEPS" init_from="$OUT/recall/final" optim.lr=0.001 \
        'algorithm={"name": "unbiased", "window": 5}' "${RECALL/recall_train/recall_mixed}"
stage "3. UIO memory on the books ($BOOKS_STEPS steps)" "$OUT/books/final/uio_config.json" \
    train "$OUT/books" steps="$BOOKS_STEPS" uio.decoder_lora=null "$BOOKS" data.max_tokens=512 \
        'algorithm={"name": "unbiased", "window": 2}' optim.min_lr_ratio=0.1 save_every=100
for ratio in 8 32; do
    stage "4. auto-encoding memories, ratio $ratio ($AE_STEPS steps)" "$OUT/ae$ratio/final/uio_config.json" \
        train "$OUT/ae$ratio" steps="$AE_STEPS" uio.decoder_lora=null uio.compression_ratio=$ratio "$BOOKS" \
            data.autoencode_tokens=64 'algorithm={"name": "unbiased", "window": 1}' optim.min_lr_ratio=0.1 \
            save_every=100
done
stage "5a. pass key: decoder-LoRA memory, no memory, full attention" "$RESULTS/tiny_recipe_passkey.json" \
    evaluate --uio "$OUT/recall/final" "${PASSKEY[@]}" --methods uio no_memory full --name tiny_recipe_passkey
stage "5b. pass key: frozen-decoder memory, no memory" "$RESULTS/tiny_recipe_passkey_frozen_decoder.json" \
    evaluate --uio "$OUT/recall_frozen_decoder/final" "${PASSKEY[@]}" --methods uio no_memory \
        --name tiny_recipe_passkey_frozen_decoder
stage "5c. pass key: decoder-LoRA memory trained with unbiased(2)" "$RESULTS/tiny_recipe_passkey_unbiased2.json" \
    evaluate --uio "$OUT/recall_unbiased2/final" "${PASSKEY[@]}" --methods uio --name tiny_recipe_passkey_unbiased2
stage "5d. pass key: decoder-LoRA memory continued on 3-6 segments" "$RESULTS/tiny_recipe_passkey_mixed.json" \
    evaluate --uio "$OUT/recall_mixed/final" "${PASSKEY[@]}" --methods uio no_memory --name tiny_recipe_passkey_mixed
stage "5e. perplexity of the held-out books by segment position" "$RESULTS/tiny_recipe_perplexity.json" \
    evaluate --uio "$OUT/books/final" --data data/kjv --split eval --tasks perplexity \
        --methods uio no_memory streaming full --max-doc-tokens 1024 --lengths 256 512 1024 --name tiny_recipe_perplexity
# more memory available, lower perplexity? The same trained parts reading only the last W memories.
for window in 1 4; do
    stage "5e. perplexity reading the last $window memories" "$RESULTS/tiny_recipe_perplexity_window$window.json" \
        evaluate --uio "$OUT/books/final" --data data/kjv --split eval --tasks perplexity --methods uio \
            --memory-window $window --max-doc-tokens 1024 --lengths 256 512 1024 --name tiny_recipe_perplexity_window$window
done
for ratio in 8 32; do
    stage "5f. auto-encoding, ratio $ratio" "$RESULTS/tiny_recipe_autoencode_ratio$ratio.json" \
        evaluate --uio "$OUT/ae$ratio/final" --data data/kjv --split eval --tasks autoencode --ae-segments 64 \
            --name tiny_recipe_autoencode_ratio$ratio
done
$PY launch/recipes/tiny_summary.py --results "$RESULTS" --runs "$OUT" --times "$OUT/times.tsv"
stamp "done"
