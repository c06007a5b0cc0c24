# licexp: `make train` and `make test` install what is missing (uv, then a locked .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(PYTHON) -m uv
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install train eval test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --compile-bytecode  # .pyc up front: every later start is ~12 s faster
	@touch $@

install: $(VENV)/.installed  ## create .venv from uv.lock (reproducible)

train: install  ## train the default model (override: make train ARGS="quant=ste lmbda=0.013")
	$(PY) -m licexp.train $(ARGS)

eval: install  ## evaluate the last run on real bitstreams (ARGS="ckpt_path=... data=kodak")
	$(PY) -m licexp.eval $(ARGS)

# One intra-op thread per test process: the tests' tensors are small, and the DDP tests run
# two processes at once (3m27s against 3m53s for the suite on 2 idle cores).
TEST_ENV := OMP_NUM_THREADS=1

# A bare `pytest` (make test-fast) leaves out the tests marked slow (addopts in
# pyproject.toml); `make test` runs every test in two processes, the commands that share a
# README run in one (--dist loadgroup, tests/test_readme_commands.py).
test: install  ## the whole test suite, slow tests included (what CI runs)
	$(TEST_ENV) $(PY) -m pytest -q -m "slow or not slow" -n 2 --dist loadgroup $(PYTEST_ARGS)

test-fast: install  ## the fast tier: a bare pytest, to run after each edit
	$(TEST_ENV) $(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments

bench: install  ## CPU benchmarks; each rewrites its section of BENCHMARKS.md (GPU: add --device cuda)
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/quant_cost.py
	$(PY) benchmarks/ddp.py
	$(PY) benchmarks/tiny_lic.py
	$(PY) benchmarks/tcq.py
	$(PY) benchmarks/folder_data.py
	$(PY) benchmarks/coding.py
	$(PY) benchmarks/tiny_lic_coding.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
