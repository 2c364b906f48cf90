# Two entry points: `make demo` (set up, then run the main job on the embedded demo catalogue)
# and `make test` (set up, then lint and run the tests). Both create .venv/ on first use and install
# exactly the versions in requirements.lock; `make lock` regenerates that file from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup lock docs browser demo test lint benchmark clean

setup: $(STAMP)

# Debian's Chromium renders report.html in the browser test (which skips when it is missing).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not installed; the report browser test will be skipped"; fi; }

# pip and setuptools come from the lock too; the package itself installs without dependencies and
# without build isolation, so nothing outside the lock is resolved.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $$(grep -E '^(pip|setuptools)==' $(LOCK))
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

lock:
	PYTHON=$(PYTHON) tools/lock.sh

# docs/config.md and docs/config.schema.json from the configuration models.
docs: setup
	$(BIN)/python -m m6rec.config_docs

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
