# Two commands on a fresh machine with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test stress bench lab screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/parmana-lab demo

test: $(STAMP)
	$(BIN)/ruff check parmana_lab tests benchmarks
	$(BIN)/python -m pytest

# 1,000 SIGKILLs at random points (make test runs 50): nothing handed back is lost, nothing is confirmed twice.
stress: $(STAMP)
	PARMANA_KILLS=1000 $(BIN)/python -m pytest tests/test_crashes.py -q -s

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# JupyterLab is not needed to run or test the kit, so it is installed only on demand.
lab: $(STAMP)
	$(BIN)/python -m pip install --quiet 'jupyterlab>=4.2,<5'
	$(BIN)/jupyter lab notebooks/

# Re-render docs/img/*.png in a real JupyterLab; needs a Chromium (Debian: apt install chromium).
screenshots: $(STAMP)
	$(BIN)/python -m pip install --quiet 'jupyterlab>=4.2,<5' 'playwright>=1.45'
	$(BIN)/python docs/render_screenshots.py

clean:
	rm -rf $(VENV) .parmana .pytest_cache
