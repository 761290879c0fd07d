# Two commands do all set-up on a fresh machine (see README):
#   make demo   runs the main job
#   make test   runs the test suite (what .ci/run calls)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test test-fast lint clean
setup: $(VENV)/.installed

# Order matters: the pinned CPU torch goes in first so that no later resolver pulls a CUDA build;
# SGLang itself goes in without its dependencies (they pin a CUDA torch and GPU kernels).
# pyproject.toml gives torch and triton as ranges (the GPU set, docker/gpu.lock, takes 2.14.1 and
# 3.8); the CPU set's pins are these two.
$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	# No torchvision in the venv (see below): drop one a previous install may have left.
	$(PIP) uninstall --quiet --yes torchvision 2>/dev/null || true
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0 triton==3.9.0
	$(PIP) install --quiet -e '.[dev,rollout]'
	$(PIP) install --quiet --no-deps sglang==0.5.23 sglang-router==0.3.2 timm==1.0.25
	# SGLang imports torchvision even for text models; PyPI's build breaks `import transformers` in any
	# process that sees it, so it lives in a folder only the SGLang server children put on their path.
	$(PIP) install --quiet --no-deps --target $(VENV)/sglang-cpu-site "torchvision==0.28.*"
	touch $@

demo: setup
	$(VENV)/bin/s2l demo

# NOTE: the pytest script, not `python -m pytest`: the latter puts the repo root on sys.path, where
# the kernels/ folder would shadow Hugging Face's `kernels` package that transformers looks up.
# Two pytest-xdist workers: the two groups of server-backed tests one in each, in order (their
# session servers are shared), every other module whole in either; the groups are dealt in the order
# tests/conftest.py puts them, server groups first (docs/testing.md).
PYTEST_PARALLEL := -n 2 --dist loadgroup --no-loadscope-reorder
test: setup
	$(VENV)/bin/pytest tests $(PYTEST_PARALLEL) --durations=15

# The inner loop: unit tests and the integration tests that start no SGLang server.
test-fast: setup
	$(VENV)/bin/pytest tests -m "not sglang" $(PYTEST_PARALLEL) --durations=10

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV)
