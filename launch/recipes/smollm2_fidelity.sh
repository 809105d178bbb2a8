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
#      teacher-forced loss with and without memory), for the warm start and for the parts of step 1;
#   3. a reader of facts from those parts: the release's reading (4 sinks, the 6 most recent memories,
#      768 raw tokens, the segment) trained READER_STEPS steps on fact records in the 8 training
#      wordings (FACT_WEIGHT, 70% of documents; 1,984 tokens, the fact in the first 45% of the text,
#      so beyond the raw window when the question is read; the answer scored by the next-token loss
#      and distillation) and by distillation on the training books (BOOK_WEIGHT, 30%). Facts weigh most: the
#      decoder is frozen, so the books only keep the memory useful to perplexity, and the loss is a
#      mean over the step's scored tokens, where a record's few answer tokens weigh next to nothing
#      beside a book's 2,048: only steps whose documents are all fact records teach facts;
#   4. its facts on the committed held-out records (held-out wording over licence text, 2K tokens),
#      next to the same reading without memory, and its perplexity at 4K / 8K tokens;
#   5. a second auto-encoding cycle from the parts of step 1 (AE2_STEPS steps, the learning rate
#      back at 1e-3 with its cosine, the documents in another order: data.seed=1), whose loss had
#      been flat for its last 200 steps as the first cycle's rate decayed; and its reconstruction;
#   6. a wider encoder: the parts of step 1 with their encoder LoRA (rank 8) widened from q_proj /
#      v_proj to all seven linear layers of every block (attention and MLP; the new modules start
#      as a no-op), trained as the second cycle of step 5 is (AE2_STEPS steps, the rate back at
#      1e-3, data.seed=1): the same start, steps and documents, so the two compare the encoder's
#      width alone; and its reconstruction;
#   7. a larger rank: the same as step 6 with the encoder's and the transfer head's LoRA grown from
#      rank 8 to GROW_RANK (alpha 2 x rank, the same scale; the saved rank fills the first rows and
#      columns and the rest starts as a no-op), so steps 6 and 7 compare the rank alone;
#   8. a lower compression ratio: the same as step 7 at ratio LOW_RATIO (4: 64 slots a segment
#      instead of 32), each saved <mem> row starting the slots that cover its chunk, so steps 7
#      and 8 compare the memory's size alone;
#   9. a reader of facts from the parts of step 8, trained as step 3 (the same data and objective)
#      with RATIO_WINDOW (3) memories of 64 slots, the release's number of slots (6 x 32), so its
#      reading holds the same K/V entries; its facts and perplexity as in step 4, with and without
#      memory;
#  11. the hand-over alone: a reader of facts from the parts of step 8 on short fact records (480
#      tokens of the training wordings over books, stories and code, the fact in the first 45%, so in
#      the first of the two 256-token segments, the question at the end of the second) read with no
#      raw window and no sinks, so the answer can come only from the first segment's memory;
#      NEAR_STEPS steps of fact records alone (lm and distillation on the answer);
#  12. its facts on the committed short held-out records (held-out wording over licence text), next
#      to no memory and full attention, and the parts of step 8 read the same way;
#  13. facts further back: the reader of step 11 trained FAR_STEPS steps on the fact records of step 3
#      (1,984 tokens, the fact in the first 45%), still from memory alone, reading every memory;
#  14. facts on the committed 2K held-out records read the same way (every memory, no raw window, no
#      sinks), by the readers of steps 13 and 11;
#  15. a shorter way back: the reader of step 11 trained MID_STEPS steps on fact records of 480, 736
#      and 992 tokens (the fact 1-3 segments before the question's), from memory alone;
#  16. facts 1-3 segments back on the committed held-out records of 736 and 992 tokens, by the
#      readers of steps 15 and 11, and the reader of step 15 one segment back and at 2K;
#  17. every distance up to 2K: the reader of step 15 trained SPAN_STEPS steps on fact records of
#      480 to 1,984 tokens in 256-token steps (the fact 1-7 segments before the question's), 8 a
#      step, from memory alone: the hand-over was learnt only at the distances it was trained on;
#  18. its facts at 2K, 1-3 segments back and one segment back, read from memory alone;
#  19. its facts at 4K and 8K (the first 32 records of the committed long held-out records, the fact
#      in the first half of the prompt), read from every memory alone.
#  20. more of step 17: its reader trained SPAN2_STEPS more steps on fresh fact records drawn as
#      step 17's (another seed, so none was seen before), the learning rate back at 1e-3 with its
#      cosine: step 17's loss was still falling when its rate had decayed; and its facts at 2K;
#  21. the same with exact gradients: every step so far kept a reservoir of S=2 memories
#      (algorithm.window in the config), so the encoder of a fact's segment 5-7 segments back got
#      its gradient in about 2 steps of 7 (scaled by up to 3.5 to stay unbiased), where the transfer
#      head reading it got one every step; here S=8 holds every memory of a 2K record; and its
#      facts at 2K, so steps 20 and 21 compare the window alone;
#  22. the facts of both at 4K and 8K, 1-3 segments back and one segment back;
#  23. facts at every depth: every record so far put its fact in the first 45% of the text, so never
#      in the question's own segment, and no reader answered such a fact (its memory overrode the
#      text beside the question, which the decoder alone reads); the reader of step 20 trained
#      DEPTH_STEPS steps on fresh records drawn as step 20's with the fact anywhere (depth 0-1,
#      another seed); its facts at 2K (the cells by segments back), 1-3 and one segment back, and at
#      4K and 8K;
#  24. the goal's reading: the facts of step 23's reader at 4K, 8K and 16K read with 4 sinks and 768
#      raw tokens before each segment beside every memory (it was trained on memory alone; without
#      memory that reading is StreamingLLM's, which the release's baselines read: the fact lies in the
#      first half of the prompt, beyond the raw tokens); and from memory alone at 16K;
#  25. training in the goal's reading: every reader since step 11 was trained and read from memory
#      alone, and step 24 found it read worse beside the raw tokens it never saw; fresh records of
#      1,984-4,032 tokens with 2-4 facts anywhere and questions about 2-4 of them (the answers after
#      the first scored as the first is), read as the goal reads them (4 sinks, 768 raw tokens and
#      every memory: a fact 3 segments or more before the question's is read through memory alone);
#      step 23's reader trained GOAL_STEPS steps (a reservoir of 2 memories); its facts at 4K, 8K
#      and 16K read the same way. It changes three things at once (the reading, longer records,
#      several facts a record): a step towards the goal, not an ablation;
#  26. longer records from memory alone: step 25 read worse than step 23's reader at every length,
#      and step 23's reader reads worse the longer the record, from memory alone too (answer loss
#      1.00 / 1.45 / 2.27 / 3.09 nats a token at 2K / 4K / 8K / 16K); so one lever: step 23's
#      reader trained LONG_STEPS steps from memory alone on fresh records as step 23's (one fact
#      anywhere, one question) but of step 25's lengths, 2 a rank and step (about as many tokens
#      as step 23's 4 shorter ones); its facts at 4K-32K (at 32K the 124 most recent memories, the
#      most SmolLM2's positions hold) and at 2K, from memory alone; and step 23's reader at 32K.
# Parts committed under $MILESTONES/ae_long are not trained again: another machine continues from
# them (`--set init_from=release/milestones/fidelity/ae_long`). Stages are skipped when their
# output exists, so an interrupted recipe continues where it stopped.
set -euo pipefail
OUT=${OUT:-runs/fidelity}
RECIPE=fidelity-recipe
AE_STEPS=${AE_STEPS:-700}
AE_SEGMENTS=${AE_SEGMENTS:-32}
AE2_STEPS=${AE2_STEPS:-250}
GROW_RANK=${GROW_RANK:-32}
LOW_RATIO=${LOW_RATIO:-4}
RATIO_WINDOW=${RATIO_WINDOW:-3}
READER_STEPS=${READER_STEPS:-150}
NEAR_STEPS=${NEAR_STEPS:-200}
FAR_STEPS=${FAR_STEPS:-150}
MID_STEPS=${MID_STEPS:-150}
SPAN_STEPS=${SPAN_STEPS:-150}
SPAN2_STEPS=${SPAN2_STEPS:-75}
EXACT_WINDOW=${EXACT_WINDOW:-8}
DEPTH_STEPS=${DEPTH_STEPS:-150}
GOAL_STEPS=${GOAL_STEPS:-60}
LONG_STEPS=${LONG_STEPS:-90}
FACT_TRAIN_DOCS=${FACT_TRAIN_DOCS:-3000}
FACT_WEIGHT=${FACT_WEIGHT:-0.7}  # relative weights of the two sources
BOOK_WEIGHT=${BOOK_WEIGHT:-0.3}
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

DATA=$OUT/data
mkdir -p "$DATA"
# fact_data NAME OPTIONS...: FACT_TRAIN_DOCS training records $DATA/NAME.jsonl, the training wordings
# over the training books, stories and code; OPTIONS give the lengths, facts, questions, depths, seed
fact_data() {
    local name=$1; shift
    $PY -m uio_ds make-fact-data --out "$DATA/$name.jsonl" --tokenizer models/smollm2 --documents "$FACT_TRAIN_DOCS" \
        --corpus data/kjv --haystacks books story code --templates train "$@"
}
SPAN_TOKENS=(480 736 992 1248 1504 1760 1984)  # 1-7 segments before the question's
stage "3. data: facts beyond the window, training wordings" "$DATA/facts_far.jsonl" \
    fact_data facts_far --tokens 1984 --facts 1 1 --questions 1 1 --depth 0 0.45
books='{"path": "data/kjv", "split": "train", "name": "kjv", "weight": '"$BOOK_WEIGHT"'}'
facts="{\"path\": \"$DATA/facts_far.jsonl\", \"text_field\": \"prompt\", \"completion_field\": \"completion\", \"eos\": false,
    \"name\": \"facts_far\", \"weight\": $FACT_WEIGHT, \"objective\": {\"lm\": 1.0, \"distill\": 1.0}}"
reader=$MILESTONES/reader
if [[ ! -e $reader/uio_config.json ]]; then
    stage "3. a reader of facts from $parts ($READER_STEPS steps)" "$OUT/reader/final/uio_config.json" \
        ds_train "$CONFIG" "$OUT/reader" steps="$READER_STEPS" init_from="$parts" objective.lm=0 objective.distill=1 \
        uio.sink_tokens=4 uio.recent_tokens=768 uio.memory_window=6 "data.sources=[$books, $facts]"
    reader=$OUT/reader/final
fi
READING=(--memory-window 6 --recent-tokens 768 --sink-tokens 4)
WINDOW=(--memory-window 0 --recent-tokens 768 --sink-tokens 4)
read_facts() {  # read_facts PARTS NAME OPTIONS...
    local parts=$1 name=$2; shift 2
    $PY launch/eval.py --model models/smollm2 --uio "$parts" --data data/kjv --split eval --tasks perplexity facts \
        --lengths 4096 8192 --max-doc-tokens 8192 --facts "$HELD_OUT_FACTS" --methods uio --out "$RESULTS" \
        --name "$name" "$@"
}
stage "4. the reader: facts and perplexity" "$RESULTS/smollm2_fidelity_reader.json" \
    read_facts "$reader" smollm2_fidelity_reader "${READING[@]}"
stage "4. the reader without memory" "$RESULTS/smollm2_fidelity_reader_window.json" \
    read_facts "$reader" smollm2_fidelity_reader_window "${WINDOW[@]}"
# ae_stage NUMBER NAME WHAT OVERRIDES...: a cycle of AE2_STEPS auto-encoding steps from $parts (the
# learning rate back at 1e-3 with its cosine, the documents in another order: data.seed=1), unless
# its milestone $MILESTONES/NAME is committed, and its reconstruction; sets $trained to its parts
ae_stage() {
    local number=$1 name=$2 what=$3; shift 3
    trained=$MILESTONES/$name
    if [[ ! -e $trained/uio_config.json ]]; then
        stage "$number. auto-encoding from $parts: $what ($AE2_STEPS steps)" "$OUT/$name/final/uio_config.json" \
            ds_train "$CONFIG" "$OUT/$name" steps="$AE2_STEPS" save_every=25 init_from="$parts" data.seed=1 "$@" \
            data.autoencode_tokens=256 data.max_tokens=null data.documents_per_step=4
        trained=$OUT/$name/final
    fi
    stage "$number. reconstruction: $what" "$RESULTS/smollm2_fidelity_$name.json" \
        reconstruct "$trained" "smollm2_fidelity_$name"
}
ae_stage 5 ae_cycle2 "a second cycle"
ALL_LINEAR='["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]'
ae_stage 6 ae_wide "the encoder LoRA on every linear layer" "uio.encoder_lora.target_modules=$ALL_LINEAR"
GROWN=("uio.encoder_lora.target_modules=$ALL_LINEAR" uio.encoder_lora.rank="$GROW_RANK"
    uio.encoder_lora.alpha=$((2 * GROW_RANK)) uio.transfer_lora.rank="$GROW_RANK"
    uio.transfer_lora.alpha=$((2 * GROW_RANK)))
ae_stage 7 "ae_rank$GROW_RANK" "every linear layer, LoRA rank $GROW_RANK" "${GROWN[@]}"
ae_stage 8 "ae_ratio$LOW_RATIO" "as step 7, at compression ratio $LOW_RATIO" "${GROWN[@]}" \
    uio.compression_ratio="$LOW_RATIO"
ratio=$trained
reader4=$MILESTONES/reader_ratio$LOW_RATIO
if [[ ! -e $reader4/uio_config.json ]]; then
    stage "9. a reader of facts from $ratio ($READER_STEPS steps, $RATIO_WINDOW memories)" \
        "$OUT/reader_ratio$LOW_RATIO/final/uio_config.json" \
        ds_train "$CONFIG" "$OUT/reader_ratio$LOW_RATIO" steps="$READER_STEPS" init_from="$ratio" objective.lm=0 \
        objective.distill=1 "${GROWN[@]}" uio.compression_ratio="$LOW_RATIO" uio.sink_tokens=4 \
        uio.recent_tokens=768 uio.memory_window="$RATIO_WINDOW" "data.sources=[$books, $facts]"
    reader4=$OUT/reader_ratio$LOW_RATIO/final
fi
stage "10. the ratio-$LOW_RATIO reader: facts and perplexity" "$RESULTS/smollm2_fidelity_reader_ratio$LOW_RATIO.json" \
    read_facts "$reader4" smollm2_fidelity_reader_ratio$LOW_RATIO --memory-window "$RATIO_WINDOW" --recent-tokens 768 \
    --sink-tokens 4
stage "10. the ratio-$LOW_RATIO reader without memory" \
    "$RESULTS/smollm2_fidelity_reader_ratio${LOW_RATIO}_window.json" \
    read_facts "$reader4" smollm2_fidelity_reader_ratio${LOW_RATIO}_window "${WINDOW[@]}"
# fact_source NAME: the training source $DATA/NAME.jsonl of fact records, the answer scored by the
# next-token loss and by distillation
fact_source() {
    echo "{\"path\": \"$DATA/$1.jsonl\", \"text_field\": \"prompt\", \"completion_field\": \"completion\", \"eos\": false,
    \"name\": \"$1\", \"objective\": {\"lm\": 1.0, \"distill\": 1.0}}"
}
# reader_stage NUMBER NAME FROM STEPS DATA WHAT READING OVERRIDES...: a reader of the fact records
# $DATA/DATA.jsonl alone trained STEPS steps from the parts FROM, in the reading OVERRIDES set (READING
# names it), unless its milestone $MILESTONES/NAME is committed; sets $trained to its parts
reader_stage() {
    local number=$1 name=$2 from=$3 steps=$4 data=$5 what=$6 reading=$7; shift 7
    trained=$MILESTONES/$name
    if [[ ! -e $trained/uio_config.json ]]; then
        stage "$number. a reader of facts $what from $from ($steps steps, $reading)" "$OUT/$name/final/uio_config.json" \
            ds_train "$CONFIG" "$OUT/$name" steps="$steps" save_every=25 init_from="$from" "${GROWN[@]}" \
            uio.compression_ratio="$LOW_RATIO" "$@" "data.sources=[$(fact_source "$data")]"
        trained=$OUT/$name/final
    fi
}
alone_stage() {  # alone_stage NUMBER NAME FROM STEPS DATA WHAT OVERRIDES...: reader_stage from memory alone
    local number=$1 name=$2 from=$3 steps=$4 data=$5 what=$6; shift 6
    reader_stage "$number" "$name" "$from" "$steps" "$data" "$what" "memory alone" uio.sink_tokens=0 \
        uio.recent_tokens=0 "$@"
}
read_on() {  # read_on RECORDS PARTS NAME "METHODS" OPTIONS...: the facts of RECORDS read by PARTS, the reading in OPTIONS
    local records=$1 parts=$2 name=$3 methods=$4; shift 4
    # shellcheck disable=SC2086  # METHODS is a list of words
    $PY launch/eval.py --model models/smollm2 --uio "$parts" --tasks facts --facts "$records" --methods $methods \
        --out "$RESULTS" --name "$name" "$@"
}
read_alone() {  # read_alone RECORDS PARTS NAME "METHODS" [OPTIONS...]: facts read from every memory alone (no raw window, no sinks)
    read_on "$@" --recent-tokens 0 --sink-tokens 0
}
stage "11. data: facts one segment back, training wordings" "$DATA/facts_near.jsonl" \
    fact_data facts_near --tokens 480 --facts 1 1 --questions 1 1 --depth 0 0.45
alone_stage 11 reader_near "$ratio" "$NEAR_STEPS" facts_near "one segment back" data.documents_per_step=4
handover=$trained
stage "12. facts one segment back: the parts of step 8" "$RESULTS/smollm2_fidelity_near_ae_ratio$LOW_RATIO.json" \
    read_alone "$NEAR_FACTS" "$ratio" "smollm2_fidelity_near_ae_ratio$LOW_RATIO" "uio no_memory full"
stage "12. facts one segment back: the hand-over reader" "$RESULTS/smollm2_fidelity_near_reader.json" \
    read_alone "$NEAR_FACTS" "$handover" smollm2_fidelity_near_reader uio
alone_stage 13 reader_far "$handover" "$FAR_STEPS" facts_far "further back"
stage "14. facts at 2K from memory alone: the reader of step 13" "$RESULTS/smollm2_fidelity_far_reader.json" \
    read_alone "$HELD_OUT_FACTS" "$trained" smollm2_fidelity_far_reader uio
stage "14. facts at 2K from memory alone: the hand-over reader" "$RESULTS/smollm2_fidelity_far_reader_near.json" \
    read_alone "$HELD_OUT_FACTS" "$handover" smollm2_fidelity_far_reader_near uio
stage "15. data: facts 1-3 segments back, training wordings" "$DATA/facts_mid.jsonl" \
    fact_data facts_mid --tokens 480 736 992 --facts 1 1 --questions 1 1 --depth 0 0.45
alone_stage 15 reader_mid "$handover" "$MID_STEPS" facts_mid "1-3 segments back" data.documents_per_step=4
stage "16. facts 1-3 segments back: the reader of step 15" "$RESULTS/smollm2_fidelity_mid_reader.json" \
    read_alone "$MID_FACTS" "$trained" smollm2_fidelity_mid_reader uio
stage "16. facts 1-3 segments back: the hand-over reader" "$RESULTS/smollm2_fidelity_mid_reader_near.json" \
    read_alone "$MID_FACTS" "$handover" smollm2_fidelity_mid_reader_near "uio no_memory full"
stage "16. facts one segment back: the reader of step 15" "$RESULTS/smollm2_fidelity_near_reader_mid.json" \
    read_alone "$NEAR_FACTS" "$trained" smollm2_fidelity_near_reader_mid uio
stage "16. facts at 2K from memory alone: the reader of step 15" "$RESULTS/smollm2_fidelity_far_reader_mid.json" \
    read_alone "$HELD_OUT_FACTS" "$trained" smollm2_fidelity_far_reader_mid uio
stage "17. data: facts 1-7 segments back, training wordings" "$DATA/facts_span.jsonl" \
    fact_data facts_span --tokens "${SPAN_TOKENS[@]}" --facts 1 1 --questions 1 1 --depth 0 0.45
alone_stage 17 reader_span "$trained" "$SPAN_STEPS" facts_span "1-7 segments back" data.documents_per_step=4
stage "18. facts at 2K from memory alone: the reader of step 17" "$RESULTS/smollm2_fidelity_far_reader_span.json" \
    read_alone "$HELD_OUT_FACTS" "$trained" smollm2_fidelity_far_reader_span uio
stage "18. facts 1-3 segments back: the reader of step 17" "$RESULTS/smollm2_fidelity_mid_reader_span.json" \
    read_alone "$MID_FACTS" "$trained" smollm2_fidelity_mid_reader_span uio
stage "18. facts one segment back: the reader of step 17" "$RESULTS/smollm2_fidelity_near_reader_span.json" \
    read_alone "$NEAR_FACTS" "$trained" smollm2_fidelity_near_reader_span uio
stage "19. facts at 4K and 8K from memory alone: the reader of step 17" "$RESULTS/smollm2_fidelity_long_reader_span.json" \
    read_alone "$LONG_FACTS" "$trained" smollm2_fidelity_long_reader_span uio --facts-max 32
stage "20. data: fresh facts 1-7 segments back, training wordings" "$DATA/facts_span2.jsonl" \
    fact_data facts_span2 --tokens "${SPAN_TOKENS[@]}" --facts 1 1 --questions 1 1 --depth 0 0.45 --seed 1
span=$trained
alone_stage 20 reader_span2 "$span" "$SPAN2_STEPS" facts_span2 "1-7 segments back, a second cycle" \
    data.documents_per_step=4
span2=$trained
stage "20. facts at 2K from memory alone: the reader of step 20" "$RESULTS/smollm2_fidelity_far_reader_span2.json" \
    read_alone "$HELD_OUT_FACTS" "$span2" smollm2_fidelity_far_reader_span2 uio
alone_stage 21 reader_span_exact "$span" "$SPAN2_STEPS" facts_span2 \
    "1-7 segments back, a second cycle with every memory's gradient (S=$EXACT_WINDOW)" data.documents_per_step=4 \
    algorithm.window="$EXACT_WINDOW"
exact=$trained
stage "21. facts at 2K from memory alone: the reader of step 21" \
    "$RESULTS/smollm2_fidelity_far_reader_span_exact.json" \
    read_alone "$HELD_OUT_FACTS" "$exact" smollm2_fidelity_far_reader_span_exact uio
for name in span2 span_exact; do
    reader_parts=$span2
    [[ $name == span_exact ]] && reader_parts=$exact
    stage "22. facts at 4K and 8K from memory alone: reader_$name" "$RESULTS/smollm2_fidelity_long_reader_$name.json" \
        read_alone "$LONG_FACTS" "$reader_parts" "smollm2_fidelity_long_reader_$name" uio --facts-max 32
    stage "22. facts 1-3 segments back: reader_$name" "$RESULTS/smollm2_fidelity_mid_reader_$name.json" \
        read_alone "$MID_FACTS" "$reader_parts" "smollm2_fidelity_mid_reader_$name" uio
    stage "22. facts one segment back: reader_$name" "$RESULTS/smollm2_fidelity_near_reader_$name.json" \
        read_alone "$NEAR_FACTS" "$reader_parts" "smollm2_fidelity_near_reader_$name" uio
done
stage "23. data: fresh facts anywhere in 480-1,984 tokens, training wordings" "$DATA/facts_depth.jsonl" \
    fact_data facts_depth --tokens "${SPAN_TOKENS[@]}" --facts 1 1 --questions 1 1 --depth 0 1 --seed 2
alone_stage 23 reader_depth "$span2" "$DEPTH_STEPS" facts_depth "at every depth" data.documents_per_step=4
depth=$trained
stage "23. facts at 2K from memory alone: reader_depth" "$RESULTS/smollm2_fidelity_far_reader_depth.json" \
    read_alone "$HELD_OUT_FACTS" "$depth" smollm2_fidelity_far_reader_depth uio
stage "23. facts one segment back: reader_depth" "$RESULTS/smollm2_fidelity_near_reader_depth.json" \
    read_alone "$NEAR_FACTS" "$depth" smollm2_fidelity_near_reader_depth uio
stage "23. facts 1-3 segments back: reader_depth" "$RESULTS/smollm2_fidelity_mid_reader_depth.json" \
    read_alone "$MID_FACTS" "$depth" smollm2_fidelity_mid_reader_depth uio
stage "23. facts at 4K and 8K from memory alone: reader_depth" "$RESULTS/smollm2_fidelity_long_reader_depth.json" \
    read_alone "$LONG_FACTS" "$depth" smollm2_fidelity_long_reader_depth uio --facts-max 32
SINKS_WINDOW=(--sink-tokens 4 --recent-tokens 768)
stage "24. facts at 4K-16K with sinks and a raw window: reader_depth" \
    "$RESULTS/smollm2_fidelity_long_window_reader_depth.json" \
    read_on "$LONG_FACTS" "$depth" smollm2_fidelity_long_window_reader_depth uio "${SINKS_WINDOW[@]}" \
    --facts-lengths 4096 8192 16384
stage "24. facts at 16K from memory alone: reader_depth" "$RESULTS/smollm2_fidelity_16k_reader_depth.json" \
    read_alone "$LONG_FACTS" "$depth" smollm2_fidelity_16k_reader_depth uio --facts-lengths 16384
GOAL_TOKENS=(1984 2496 3008 3520 4032)  # 7-15 segments before the question's
stage "25. data: fresh records of 2-4 facts anywhere in 1,984-4,032 tokens, 2-4 asked" "$DATA/facts_goal.jsonl" \
    fact_data facts_goal --tokens "${GOAL_TOKENS[@]}" --facts 2 4 --questions 2 4 --depth 0 1 --seed 3
reader_stage 25 reader_goal "$depth" "$GOAL_STEPS" facts_goal "2-4 to a record of 2K-4K tokens" \
    "4 sinks, 768 raw tokens and every memory" uio.sink_tokens=4 uio.recent_tokens=768 data.documents_per_step=4 \
    data.max_tokens=4096
goal=$trained
stage "25. facts at 4K-16K in the goal's reading: reader_goal" "$RESULTS/smollm2_fidelity_long_window_reader_goal.json" \
    read_on "$LONG_FACTS" "$goal" smollm2_fidelity_long_window_reader_goal uio "${SINKS_WINDOW[@]}" \
    --facts-lengths 4096 8192 16384
stage "26. data: fresh records of one fact anywhere in 1,984-4,032 tokens" "$DATA/facts_long.jsonl" \
    fact_data facts_long --tokens "${GOAL_TOKENS[@]}" --facts 1 1 --questions 1 1 --depth 0 1 --seed 4
alone_stage 26 reader_long "$depth" "$LONG_STEPS" facts_long "at every depth in 2K-4K tokens" \
    data.documents_per_step=2 data.max_tokens=4096
long=$trained
# every memory of a 32K prompt (128 segments of 64 slots) is more than SmolLM2's 8,192 positions hold
# beside a segment: the most that fit, 124 (31,744 tokens back), read the long records; below 32K
# that is every memory
LONG_WINDOW=124
stage "26. facts at 4K-32K from memory alone: reader_long" "$RESULTS/smollm2_fidelity_long_reader_long.json" \
    read_alone "$LONG_FACTS" "$long" smollm2_fidelity_long_reader_long uio --memory-window "$LONG_WINDOW"
stage "26. facts at 2K from memory alone: reader_long" "$RESULTS/smollm2_fidelity_far_reader_long.json" \
    read_alone "$HELD_OUT_FACTS" "$long" smollm2_fidelity_far_reader_long uio
stage "26. facts at 32K from memory alone: reader_depth" "$RESULTS/smollm2_fidelity_32k_reader_depth.json" \
    read_alone "$LONG_FACTS" "$depth" smollm2_fidelity_32k_reader_depth uio --memory-window "$LONG_WINDOW" \
    --facts-lengths 32768
stamp "done: figures: $PY launch/recipes/fidelity_summary.py"
