# Shared by the recipes (sourced after they set RECIPE, a label for the log, and OUT, their run
# directory): the tools, stage bookkeeping and the DeepSpeed launch: 2 CPU ranks, or one rank per
# GPU where CUDA is available (ACCELERATOR=cpu|cuda and RANKS=N choose otherwise).
RESULTS=${RESULTS:-benchmarks/results}
PY=${PY:-.venv/bin/python}
DEEPSPEED=${DEEPSPEED:-.venv/bin/deepspeed}
ACCELERATOR=${ACCELERATOR:-$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}
if [[ $ACCELERATOR == cpu ]]; then
    RANKS=${RANKS:-2}
else
    RANKS=${RANKS:-$($PY -c "import torch; print(torch.cuda.device_count())")}
fi
# PYTHONPATH: the launch/ scripts import uio_ds from this checkout, not from wherever the environment
# installed it (an editable install points at one clone: a run in a worktree would use main's code)
export DS_ACCELERATOR=$ACCELERATOR PATH="$(dirname "$PY"):$PATH" PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
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
# per_rank CONFIG OVERRIDES...: documents each of $RANKS ranks reads a step so that a step reads as many
# as the recipe's 2 ranks do (the recipes' figures were measured on 2); an error where they cannot share them
per_rank() {
    $PY - "$RANKS" "$@" <<'EOF'
import sys

from uio_ds.config import TrainConfig

ranks, config, overrides = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
total = 2 * TrainConfig.from_file(config, overrides).data.documents_per_step
if ranks < 1 or total % ranks:
    sys.exit(f"error: RANKS={ranks}: a step of this recipe reads {total} documents (2 ranks x "
             f"data.documents_per_step), which {ranks} ranks cannot share evenly: set RANKS to a divisor of {total}")
print(total // ranks)
EOF
}
# ds_train CONFIG RUN_DIR --set overrides...: launch/train.py on $RANKS ranks, resuming RUN_DIR if it holds a checkpoint
ds_train() {
    local config=$1 run=$2; shift 2
    local scaled=()
    if [[ $RANKS != 2 ]]; then
        local documents
        documents=$(per_rank "$config" "$@") || return 1
        scaled=(data.documents_per_step="$documents")
    fi
    $DEEPSPEED --num_gpus "$RANKS" --master_port "$(free_port)" launch/train.py --deepspeed ds_configs/zero2.json \
        --config "$config" --resume auto --set output_dir="$run" "$@" "${scaled[@]}"
}
# the recipes' fact evaluation, committed (benchmarks/data/README.md: generated records depend on the machine)
HELD_OUT_FACTS=benchmarks/data/facts_held_out_2k.jsonl.gz
NEAR_FACTS=benchmarks/data/facts_held_out_near.jsonl.gz
MID_FACTS=benchmarks/data/facts_held_out_mid.jsonl.gz
LONG_FACTS=benchmarks/data/facts_held_out_long.jsonl.gz
