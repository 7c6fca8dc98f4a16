# Two commands do all the set-up:
#   make run    create .venv if missing, install the pinned requirements and the
#               package, then run the notebook pipeline's full profile into $(RUN)
#   make test   the same set-up, then ruff, the unit tests, the pipeline's smoke
#               profile, and nbval over the committed notebooks
# The MNIST file is found through $VAE_MNIST (see README.md).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?= runs/homework
ARGS   ?=
# nbval executes the committed notebooks with their own parameters; their relative
# run directories go under this folder, away from the runs of `make run`.
NBVAL_RUNS ?= runs/nbval

.PHONY: run test install clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python 3.11 or newer is needed: run make with PYTHON=python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m vae_helpers pipeline --profile full --out $(RUN) $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
	$(BIN)/python -m vae_helpers pipeline --profile smoke --out runs/smoke --force --no-progress
	VAE_PROGRESS=text VAE_RUNS_ROOT=$(abspath $(NBVAL_RUNS)) $(BIN)/python -m pytest -p no:cacheprovider \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=3600 notebooks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
