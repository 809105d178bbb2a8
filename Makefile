# uio_ds set-up and common jobs. Every target builds the virtual environment first
# from this repository's own files (setup.py), so a fresh clone needs nothing else.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch on CPU machines; on a CUDA machine: make TORCH_SPEC=torch ...
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job (until DeepSpeed training lands): tiny model, long text, streaming generation.
demo: $(STAMP)
	$(BIN)/python -m uio_ds demo --out outputs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q tests

clean:
	rm -rf $(VENV) outputs *.egg-info
