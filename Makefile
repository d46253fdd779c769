# gcmine: `make demo` and `make test` do everything on a fresh clone (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo lint test benchmark benchmark-perf clean

install: $(STAMP)

# torch is installed first, pinned: on a CPU-only machine `torch==2.13.0` resolves to the local
# CPU wheel; a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "gcmine needs Python 3.11, got " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gcmine demo motifs

# mypy on gcmodels/ ([tool.mypy] in pyproject.toml) alone; `make test` runs it too (tests/test_types.py)
lint: $(STAMP)
	$(BIN)/mypy

# the suite on 2 worker processes (addopts in pyproject.toml), the type check among its tests
test: $(STAMP)
	$(BIN)/pytest

benchmark: $(STAMP)
	$(BIN)/python benchmarks/ground_truth.py

# issue 7: speed, storage, estimator variance and memory against the reference method
# (one thread each; results and conditions in benchmarks/RESULTS.md)
benchmark-perf: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/scoring_speed.py --images 16
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/patch_ranking.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/estimator_variance.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/memory_scaling.py

clean:
	rm -rf $(VENV) runs .pytest_cache
