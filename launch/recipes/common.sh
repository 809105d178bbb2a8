# Shared by the recipes (sourced after they set RECIPE, a label for the log, and OUT, their run
# directory): the tools, stage bookkeeping and the DeepSpeed launch on 2 CPU ranks.
RESULTS=${RESULTS:-benchmarks/results}
PY=${PY:-.venv/bin/python}
DEEPSPEED=${DEEPSPEED:-.venv/bin/deepspeed}
export DS_ACCELERATOR=cpu PATH="$(dirname "$PY"):$PATH"
mkdir -p "$OUT" "$RESULTS"
start=$(date +%s)
stamp() { echo "[$RECIPE +$(( $(date +%s) - start ))s] $*"; }
# stage NAME DONE_FILE COMMAND...: runs COMMAND unless DONE_FILE exists, and records its time
stage() {
    local name=$1 done_file=$2; shift 2
    if [[ -e $done_file ]]; then stamp "$name: done before ($done_file)"; return; fi
    stamp "$name"
    local t0; t0=$(date +%s)
    "$@"
    printf '%s\t%s\n' "$name" $(( $(date +%s) - t0 )) >> "$OUT/times.tsv"
}
free_port() { $PY -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
# ds_train CONFIG RUN_DIR --set overrides...: launch/train.py on 2 CPU ranks, resuming RUN_DIR if it holds a checkpoint
ds_train() {
    local config=$1 run=$2; shift 2
    $DEEPSPEED --num_gpus 2 --master_port "$(free_port)" launch/train.py --deepspeed ds_configs/zero2.json \
        --config "$config" --resume auto --set output_dir="$run" "$@"
}
