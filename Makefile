# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= out

.PHONY: demo test test-envs test-gdal lint bench install clean figures

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
# The extra environments (dependency floors, Python 3.12, 3.13: scripts/test-envs) are
# installed (nice 19) and run their subset one after another (nice 5) in the background,
# in the cores the main suite leaves idle (it keeps ~1.25 of 2 busy); then the GDAL 3.9
# tests; then each log is printed.
ENVS = floors 3.12 3.13
test: install
	scripts/test-services
	@mkdir -p .envs; \
	  ( nice -n 19 scripts/test-envs install $(ENVS) || exit 1; failed=0; \
	    for e in $(ENVS); do nice -n 5 scripts/test-envs run $$e || failed=1; done; \
	    exit $$failed ) > .envs/envs.log 2>&1 & envs=$$!; \
	  $(BIN)/ruff check srlib tests benchmarks examples docs && $(BIN)/mypy \
	    && $(BIN)/python -m pytest; rc=$$?; \
	  $(MAKE) --no-print-directory test-gdal; gdal=$$?; \
	  wait $$envs; envs_rc=$$?; grep -v "is ignored" .envs/envs.log; \
	  [ $$rc -eq 0 ] && [ $$gdal -eq 0 ] && [ $$envs_rc -eq 0 ]

test-envs: install
	scripts/test-envs

# The COG path on GDAL 3.9.3 (rasterio 1.4.3), the GDAL between the floors environment's
# 3.8.4 (rasterio 1.3.10) and the main venv's: the wheel in its own folder, first on the path.
GDAL_WHEELS ?= 1.4.3
GDAL_TESTS   = cog_is_valid or super_resolve_to_cog_writes or cli_demo_and_qc or crash_during_cog \
               or gdal_drivers_file or pixel_for_pixel or compressed_while
test-gdal: install
	@for v in $(GDAL_WHEELS); do \
	  $(BIN)/python -m pip install -q --no-deps --target .gdal/rasterio-$$v rasterio==$$v \
	    || exit 1; \
	  PYTHONPATH=.gdal/rasterio-$$v $(BIN)/python -c "import rasterio; \
	    assert rasterio.__version__ == '$$v'; print('GDAL', rasterio.__gdal_version__, \
	    'from rasterio', rasterio.__version__)" || exit 1; \
	  PYTHONPATH=.gdal/rasterio-$$v $(BIN)/python -m pytest -q -p no:cacheprovider \
	    tests/test_output.py tests/test_cog_tiles.py -k "$(GDAL_TESTS)" || exit 1; \
	done

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(OUT) .gdal .envs .pytest_cache .ruff_cache
