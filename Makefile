# Wraps the commands users type; the logic lives in the ffnn CLI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FFNN := $(BIN)/ffnn
# The offline MNIST mirror beside the checkout, when there is one; torchvision's download otherwise.
SHARED_MNIST := $(wildcard ../shared/datasets/mnist)
DATA_SOURCE ?= $(if $(SHARED_MNIST),$(abspath $(SHARED_MNIST)),)
ARGS ?=
# MLflow's usage telemetry stays off in everything make starts (optuna-dashboard included);
# FFNN_TELEMETRY=1 leaves it to MLflow's defaults (README: Telemetry).
ifneq ($(FFNN_TELEMETRY),1)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
endif

.PHONY: install install-ray data fashion-data lint coverage compare report tune test test-slow test-cluster cluster cluster-stop ray ray-stop bench ui dashboard screenshots clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Ray, for --ray, make ray and the Ray tests of make test-cluster (the extra `ray` of pyproject.toml)
install-ray: $(VENV)/.installed-ray

$(VENV)/.installed-ray: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $@

data: install
	$(FFNN) data $(if $(DATA_SOURCE),--data-source $(DATA_SOURCE))

compare: data
	$(FFNN) compare $(ARGS)

report: install
	$(FFNN) report $(ARGS)

tune: data
	$(FFNN) tune $(ARGS)

# optuna-dashboard on the studies of `make tune`; a journal file path works as STORAGE too
STORAGE ?= sqlite:///mlruns/optuna.db
DASHBOARD_PORT ?= 8080
dashboard: install
	$(BIN)/optuna-dashboard --host 127.0.0.1 --port $(DASHBOARD_PORT) $(STORAGE)

# PostgreSQL + an authenticated MLflow server in the background, data under mlruns/cluster/,
# URIs and credentials in mlruns/cluster.env; HOST=0.0.0.0 serves other machines; PORT, PGPORT
# (only when given on the command line: shells often export HOST)
arg = $(if $(filter command line,$(origin $(1))),$(2) $($(1)))
cluster: install
	$(FFNN) cluster start $(call arg,HOST,--host) $(call arg,PORT,--port) $(call arg,PGPORT,--pg-port)

cluster-stop: install
	$(FFNN) cluster stop

# a local Ray cluster in the background: a head and one worker node, dashboard and usage statistics off,
# object store capped; RAY_ADDRESS and its token in mlruns/ray.env (. mlruns/ray.env; ffnn compare --ray);
# HOST=0.0.0.0 for an address other machines can join, PORT, CPUS (both nodes together)
ray: install-ray
	$(FFNN) ray start $(call arg,HOST,--host) $(call arg,PORT,--port) $(call arg,CPUS,--cpus)

ray-stop: install
	$(FFNN) ray stop

ui: install
	$(FFNN) ui $(ARGS)

screenshots: install
	FFNN_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/test_browser.py

test: install
	$(BIN)/python -m pytest -q -m "not slow and not cluster" $(ARGS)

# ruff (rules in pyproject.toml), mypy (strict on the pure modules), then make test and make test-slow
# under coverage, held to its floor (the measured figure, rounded down): what .ci/run runs
COV_FLOOR ?= 81
lint: install
	$(BIN)/ruff check ffnn tests benchmarks
	$(BIN)/mypy
	$(MAKE) --no-print-directory coverage

coverage: install-ray
	rm -f .coverage
	$(MAKE) --no-print-directory test ARGS="--cov --cov-append --cov-report= $(ARGS)"
	$(MAKE) --no-print-directory test-slow ARGS="--cov --cov-append --cov-report= $(ARGS)"
	$(BIN)/python -m coverage report --fail-under=$(COV_FLOOR) --sort=cover

# kill/resume, signals, concurrent processes, headless Chromium: CI runs these too
test-slow: install
	$(BIN)/python -m pytest -q -m "slow and not cluster" $(ARGS)

# several processes as machines on a real PostgreSQL and MLflow server, and the Ray engine's faults on a
# real local Ray cluster (their own, in a temporary folder; or the running ones under
# FFNN_TEST_CLUSTER=mlruns and FFNN_TEST_RAY=mlruns, as .ci/run does)
test-cluster: install-ray
	$(BIN)/python -m pytest -q -m cluster $(ARGS)

# Fashion-MNIST for the --until-decided benchmark: Debian's dataset-fashion-mnist (installed when root)
FASHION := /usr/share/datasets/fashion-mnist
fashion-data: install
	test -d $(FASHION) || [ "$$(id -u)" != 0 ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq dataset-fashion-mnist >/dev/null)
	$(FFNN) data --dataset fashion-mnist

bench: data fashion-data
	$(BIN)/python benchmarks/bench.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
