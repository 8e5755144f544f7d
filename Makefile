# Two entry points a new user needs: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test llm-env redis spark-cluster lint clean

# Top-level __init__ files too: the editable install records which packages exist (a folder that gains an
# __init__.py after install stays a namespace package and its imports fail).
$(STAMP): pyproject.toml $(wildcard */__init__.py)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 (e.g. apt-get install python3.11-venv)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: the CPU wheel; anything resolved without it pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,redis]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kar demo --out $(DEMO_OUT)

test: $(STAMP) redis
	$(PY) -m pytest $(PYTEST_ARGS)

# Tests marked `redis` start their own redis-server (Debian's package) on a loopback port.
redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -qq redis-server >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server; } || \
	  echo "warning: could not install redis-server; tests marked redis will skip"; }

# The vLLM CPU env and embedded model (~3.5 min once, cached in ~/.cache/kar); tests marked `llm` need it.
llm-env: $(STAMP)
	$(VENV)/bin/kar llm setup

# A Spark standalone master and two 1-core workers on 127.0.0.1 until Ctrl-C; jobs use it with
# KAR_SPARK_MASTER=spark://127.0.0.1:PORT (printed) or --master.
spark-cluster: $(STAMP)
	$(VENV)/bin/kar spark-cluster

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
