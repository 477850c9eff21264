# terra-sink developer commands. Both work on a fresh clone: they install the
# pinned Python tools (moto, SAM CLI, cfn-lint, cargo-lambda, pytest) into
# .venv themselves.

VENV := .venv
PYTHON ?= python3
VENV_STAMP := $(VENV)/.installed
# cargo-lambda (and the zig it brings) must be on PATH for `sam build`.
TOOLS := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" SAM_CLI_TELEMETRY=0
HANDLER_ARTIFACT := target/lambda/sqs-handler/bootstrap

.PHONY: test lint unit-and-integration template demo venv clean

test: lint unit-and-integration template

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements-dev.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

lint:
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

unit-and-integration: $(VENV_STAMP)
	MOTO_SERVER=$(CURDIR)/$(VENV)/bin/moto_server cargo test --locked --workspace

# The template's promises, cfn-lint through SAM, and the deployable build
# (x86_64: the only Rust target on the CI machine; deploys default to arm64).
template: $(VENV_STAMP)
	$(VENV)/bin/python -m pytest -q tests/template
	$(TOOLS) sam validate --lint
	$(TOOLS) sam build --parameter-overrides Architecture=x86_64

# The whole flow locally: moto as S3, DynamoDB and SQS, the Terra simulator,
# the local SQS mapping and the Lambda artifact of sqs-handler.
demo: $(VENV_STAMP)
	$(TOOLS) cargo lambda build --release --bin sqs-handler
	MOTO_SERVER=$(CURDIR)/$(VENV)/bin/moto_server cargo run --locked -p terra-sink-dev --bin demo -- $(HANDLER_ARTIFACT)

clean:
	rm -rf $(VENV) target .aws-sam
