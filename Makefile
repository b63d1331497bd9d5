# Two commands on a fresh machine with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-browser stress bench lab notebooks screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/parmana-lab demo

test: $(STAMP)
	$(BIN)/ruff check parmana_lab tests benchmarks browser docs
	$(BIN)/python -m pytest

# 1,000 SIGKILLs at random points (make test runs 50): nothing handed back is lost, nothing is confirmed twice.
stress: $(STAMP)
	PARMANA_KILLS=1000 $(BIN)/python -m pytest tests/test_crashes.py -q -s

# Byte-compiled first, as an installed wheel is (pip compiles on install): the editable install here is not, and
# with PYTHONDONTWRITEBYTECODE set every command would recompile the kit's sources (~90 ms of a quick verify).
bench: $(STAMP)
	$(BIN)/python -m compileall -q parmana_lab
	$(BIN)/python benchmarks/run.py

# JupyterLab is not needed to run or test the kit, so it is installed only on demand.
lab: $(STAMP)
	$(BIN)/python -m pip install --quiet 'jupyterlab>=4.2,<5'
	$(BIN)/jupyter lab notebooks/

# Every panel in JupyterLab in headless Chromium (Debian: apt install chromium), one real interaction each;
# screenshots land in build/browser/. .ci/run runs it after make test.
test-browser: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,browser]'
	$(BIN)/python -m pytest browser -o addopts="-ra --strict-markers" -p no:cacheprovider

# Re-render docs/img/*.png: the browser tests' screenshots, written there instead.
screenshots: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,browser]'
	$(BIN)/python docs/render_screenshots.py

# Re-run every notebook and store it with its outputs (fixed clocks, ids and keys: unchanged code, unchanged outputs).
notebooks: $(STAMP)
	$(BIN)/python docs/render_notebooks.py

clean:
	rm -rf $(VENV) .parmana .pytest_cache
