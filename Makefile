# Two commands do all the set-up:
#   make run        create .venv if missing, install the pinned requirements and the
#                   package, then run the notebook pipeline's full profile into $(RUN)
#   make test       the same set-up, then ruff and pytest's fast tiers: the unit tests,
#                   and nbval over every notebook at the smoke profile's sizes (minutes)
# and one more before publishing notebooks or changing the model:
#   make test-full  ruff and every tier, with nbval at the committed parameters (about 45 minutes)
# whose render check (tests/test_render.py) opens the notebooks in Chromium, installed once with
#   make render-deps  Debian's chromium and chromium-driver (apt-get, as root or with sudo);
#                   without them make test-full skips the render check and says why
# The MNIST file is found through $VAE_MNIST (see README.md); the tiers are explained
# in conftest.py and README.md.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?= runs/homework
ARGS   ?=
# pytest's workers: the notebooks run in order in one of them, the unit tests share both
JOBS   ?= 2
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider -n $(JOBS)

# apt-get needs root: sudo unless make already runs as root
SUDO   ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RENDER_PACKAGES := chromium chromium-driver

.PHONY: run test test-full install render-deps clean

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
	$(PYTEST) -m "not slow"

test-full: $(STAMP)
	$(BIN)/ruff check .
	$(PYTEST) --notebook-profile full --nbval-cell-timeout=3600

render-deps:
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(RENDER_PACKAGES)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
