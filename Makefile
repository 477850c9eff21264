# terra-sink developer commands. `make test` works on a fresh clone: it
# installs the pinned Python test servers into .venv itself.

VENV := .venv
PYTHON ?= python3
VENV_STAMP := $(VENV)/.installed

.PHONY: test lint unit-and-integration venv clean

test: lint unit-and-integration

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements-dev.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

lint:
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

unit-and-integration: $(VENV_STAMP)
	MOTO_SERVER=$(CURDIR)/$(VENV)/bin/moto_server cargo test --locked

clean:
	rm -rf $(VENV) target
