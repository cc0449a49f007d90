# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= out

.PHONY: demo test lint bench install clean figures

install: $(VENV)/.installed

# torch==2.13.0 first: on CPU-only build machines it is served from local disk;
# a GPU user's plain `pip install srlib` still resolves a CUDA build of torch.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,distributed]"
	touch $@

demo: install
	$(BIN)/srlib demo --out $(OUT)

# PostgreSQL and SLURM (Debian packages) for the tests that start them on loopback:
# installed with apt-get when run as root, else named with the command to install them.
test: install
	scripts/test-services
	$(BIN)/ruff check srlib tests benchmarks examples docs
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
