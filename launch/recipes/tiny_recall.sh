#!/usr/bin/env bash
# The tiny recipe (issue: a trained tiny model that proves memory carries information):
#   1. pre-train every weight of a tiny Llama (hidden 128, 4 layers) on short windows of the
#      King James books, short pass-key documents and repeated runs (induction practice), so
#      the frozen decoder is a working language model that can copy a key from its context;
#   2. freeze it and train UIO memory (l=64, ratio 8, unbiased(2)) with DeepSpeed on 2 CPU ranks,
#      on long pass-key documents (key in segment 1, question 4-8 segments later) and the books;
#   3. train auto-encoding memories at ratio 8 and 32 on [x ; x] documents;
#   4. evaluate: pass-key recall (UIO vs no memory), perplexity by segment position, auto-encoding.
# Run from the repository root: `make tiny-recipe` (about 20 minutes on 2 cores).
# Status: steps 1-2 run and memory lowers the loss of later segments, but the key is not yet
# recalled from memory (see the README); the settings here are the last ones tried.
set -euo pipefail
OUT=${OUT:-runs/recipe}
PY=${PY:-.venv/bin/python}
DEEPSPEED=${DEEPSPEED:-.venv/bin/deepspeed}
export DS_ACCELERATOR=cpu PATH="$(dirname "$PY"):$PATH"
mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "[recipe +$(( $(date +%s) - start ))s] $*"; }

stamp "data and the initial tiny model"
$PY -m uio_ds make-tiny --arch llama --out "$OUT/init" --hidden 128 --layers 4 --heads 4 --kv-heads 2 \
    --vocab-size 1024 --tokenizer-corpus data/kjv
$PY -m uio_ds make-recall-data --out "$OUT/recall_pretrain.jsonl" --documents 20000 --filler 1 5 --key-at 0 2 --seed 1
$PY -m uio_ds make-recall-data --kind repeat --out "$OUT/repeat.jsonl" --documents 20000 --seed 2
$PY -m uio_ds make-recall-data --out "$OUT/recall_long.jsonl" --documents 4000 --filler 8 16 --key-at 0 1 --seed 3
$PY -m uio_ds make-recall-data --kind story --out "$OUT/haystack.jsonl" --documents 8 --filler 60 60 --seed 4

$PY -m uio_ds make-recall-data --kind copy --out "$OUT/copy.jsonl" --documents 20000 --seed 5

stamp "1. pre-training the base model: induction first (copy runs), then the mixture"
$PY launch/pretrain.py --model "$OUT/init" --data "$OUT/copy.jsonl" --out "$OUT/stage1" \
    --window 128 --batch 16 --steps 600 --lr 1e-3
$PY launch/pretrain.py --model "$OUT/stage1" --data data/kjv "$OUT/recall_pretrain.jsonl" "$OUT/repeat.jsonl" \
    --weights 1 2 2 --out "$OUT/base" --window 128 --batch 16 --steps 900 --lr 1e-3

stamp "2. UIO memory training (DeepSpeed, 2 CPU ranks)"
$DEEPSPEED --num_gpus 2 --master_port 29811 launch/train.py --deepspeed ds_configs/zero2.json \
    --config launch/configs/tiny_recall.json \
    --set model_path="$OUT/base" output_dir="$OUT/uio" algorithm.window=4 data.max_tokens=384 \
          "data.sources=[{\"path\": \"$OUT/recall_long.jsonl\", \"weight\": 3}, {\"path\": \"data/kjv\", \"weight\": 1}]"

stamp "3. auto-encoding memories, ratio 8 and 32"
for ratio in 8 32; do
    $DEEPSPEED --num_gpus 2 --master_port $(( 29820 + ratio )) launch/train.py --deepspeed ds_configs/zero2.json \
        --config launch/configs/tiny_recall.json \
        --set model_path="$OUT/base" output_dir="$OUT/ae$ratio" uio.compression_ratio=$ratio \
              data.autoencode_tokens=64 steps=200 "algorithm={\"name\": \"unbiased\", \"window\": 1}" \
              "data.sources=[{\"path\": \"data/kjv\"}]"
done

stamp "4. evaluation"
$PY launch/eval.py --model "$OUT/base" --uio "$OUT/uio/final" --data "$OUT/haystack.jsonl" \
    --tasks passkey --methods uio no_memory full --passkey-lengths 256 384 512 \
    --passkey-depths 0.0 0.05 --passkey-trials 20 --name tiny_recall_passkey
$PY launch/eval.py --model "$OUT/base" --uio "$OUT/uio/final" --data data/kjv --split eval \
    --tasks perplexity --methods uio no_memory streaming full --max-doc-tokens 1024 --lengths 256 512 1024 \
    --name tiny_recall_perplexity
for ratio in 8 32; do
    $PY launch/eval.py --model "$OUT/base" --uio "$OUT/ae$ratio/final" --data data/kjv --split eval \
        --tasks autoencode --ae-segments 64 --name tiny_autoencode_ratio$ratio
done
stamp "done: figures in benchmarks/results/tiny_recall_*.json|png and tiny_autoencode_ratio*.json"
