# Two entry points: `make demo` (set up, then run the main job on the embedded demo catalogue)
# and `make test` (set up, then lint and run the tests). Both create .venv/ on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup browser demo test lint benchmark clean

setup: $(STAMP)

# Debian's Chromium renders report.html in the browser test (which skips when it is missing).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not installed; the report browser test will be skipped"; fi; }

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/m6rec demo --out demo-out

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint browser
	$(BIN)/pytest -q

benchmark: setup
	$(BIN)/python benchmarks/baselines.py --out docs/benchmarks.md

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
