# `make demo` sets up and runs a local demo; `make test` sets up and runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test browser test-tools reliability audit bench-setup bench screenshot clean

$(VENV)/.installed: requirements.txt runtime/pyproject.toml package.json package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: $(VENV)/.installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo.sh

# The suite waits on leases, sub-tasks and endpoints far more than it computes: four pytest
# processes (pytest-xdist) share even a 2-core machine well. TEST_PROCESSES=0 runs it in one.
TEST_PROCESSES ?= 4

test: $(VENV)/.installed browser test-tools
	$(PY) -m pytest -n $(TEST_PROCESSES)

# Debian's chromium for the run report's browser test; where it cannot be installed (no root, no
# apt-get) the test is skipped and says why.
browser:
	@command -v chromium > /dev/null || (DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium > /dev/null) || \
		echo "chromium could not be installed: the report's browser test will be skipped"

# Debian's bwa, samtools and bcftools for the variant-calling example's end-to-end test, nftables
# for the test of the fleet's metadata-service firewall, and faketime for the clock-skew fault
# scenario; where they cannot be installed those tests are skipped and say why.
test-tools:
	@command -v bwa > /dev/null && command -v samtools > /dev/null && command -v bcftools > /dev/null && \
		command -v nft > /dev/null && command -v faketime > /dev/null || \
		(DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install \
		-y -qq --no-install-recommends bwa samtools bcftools nftables faketime > /dev/null) || \
		echo "bwa, samtools, bcftools, nftables or faketime could not be installed: the tests that need them will be skipped"

# The fault-injection suite with figures, rendered into docs/reliability.md (SOAK=--soak: long form).
reliability: $(VENV)/.installed
	mkdir -p build docs && rm -f build/faults.jsonl
	PYANAMO_FAULTS_REPORT=build/faults.jsonl $(PY) -m pytest tests/faults -q $(SOAK)
	SOAK=$(SOAK) $(PY) tests/faults/render_report.py build/faults.jsonl > docs/reliability.md

# Known vulnerabilities in the installed, pinned packages. --strict fails if any package could
# not be checked (pip-audit needs PyPI's JSON API or OSV to be reachable).
audit: $(VENV)/.installed
	$(PY) -m pip_audit --strict --skip-editable --progress-spinner off

# Benchmarks (docs/performance.md): matplotlib for the plot, GNU parallel for the comparison.
bench-setup: $(VENV)/.installed
	$(PY) -m pip install --quiet -r bench/requirements.txt
	command -v parallel > /dev/null || (apt-get update && apt-get install -y parallel)

bench: bench-setup
	$(PY) bench/cost.py
	$(PY) bench/backlog.py
	$(PY) bench/import_status.py
	$(PY) bench/footprint.py
	$(PY) bench/dispatch.py
	$(PY) bench/dispatch.py --items 480 --workers 6,3x2 --sleep 0.3 --name dispatch-short
	$(PY) bench/report_bench.py
	$(PY) bench/workflow.py
	$(PY) bench/cpu_per_subtask.py
	$(PY) bench/report.py > docs/performance.md

# The README's picture of the run report, from the demo's real report (needs chromium).
screenshot: browser demo
	chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
		--disable-component-update --disable-sync --hide-scrollbars --user-data-dir=demo-run/chromium \
		--window-size=1150,1300 --screenshot=docs/report.png "file://$(CURDIR)/demo-run/report.html"

clean:
	rm -rf $(VENV) node_modules demo-run
