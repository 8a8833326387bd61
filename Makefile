# The two commands at the top of the README. Both create .venv on first use and
# install lvmqa with its pinned dependencies (torch 2.13.0 CPU from the local wheel).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= wiki-790k
REPORTS ?= reports

.PHONY: demo test lint install clean

$(BIN)/lvmqa: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/lvmqa

# Exit code 1 means "checks failed": that is the finding, not a crash. wiki-790k is
# broken on purpose, so the demo reports failures and still exits 0.
demo: $(BIN)/lvmqa
	mkdir -p $(REPORTS)
	$(BIN)/python -m pytest quality_tests --dataset=$(DEMO) \
		--html=$(REPORTS)/$(DEMO).html --self-contained-html \
		--lvmqa-json=$(REPORTS)/$(DEMO).json --junitxml=$(REPORTS)/$(DEMO).junit.xml; \
	code=$$?; \
	if [ $$code -gt 1 ]; then exit $$code; fi; \
	echo "report: $(REPORTS)/$(DEMO).html  results: $(REPORTS)/$(DEMO).json (pytest exit $$code)"

test: $(BIN)/lvmqa
	$(BIN)/python -m pytest tests

lint: $(BIN)/lvmqa
	$(BIN)/ruff check lvmqa tests quality_tests fixtures bench conftest.py
	$(BIN)/ruff format --check lvmqa
	$(BIN)/mypy lvmqa

clean:
	rm -rf $(VENV) $(REPORTS) .pytest_cache .mypy_cache .ruff_cache
