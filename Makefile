# terra-sink developer commands. Both work on a fresh clone: they install the
# pinned Python tools (moto, SAM CLI, cfn-lint, cargo-lambda, pytest) into
# .venv themselves.

VENV := .venv
PYTHON ?= python3
VENV_STAMP := $(VENV)/.installed
# cargo-lambda (and the zig it brings) must be on PATH for `sam build`.
TOOLS := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" SAM_CLI_TELEMETRY=0
# Where cargo (and cargo lambda) put what they build.
TARGET_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))
HANDLER_ARTIFACT := $(TARGET_DIR)/lambda/sqs-handler/bootstrap
KAFKA_ARTIFACT := $(TARGET_DIR)/lambda/kafka-handler/bootstrap
# The deployable arm64 (Graviton) artifacts, as `sam build` makes them at the
# template's default architecture. Debian's Rust goes ahead of rustup's on
# PATH: only it has the aarch64 standard library on an offline machine (see
# dev/install-arm64-toolchain.sh); zig, from cargo-lambda, links. Its own
# target directory, since its compiler differs from rustup's.
ARM64_TOOLS := PATH="$(CURDIR)/$(VENV)/bin:/usr/bin:$$PATH" SAM_CLI_TELEMETRY=0 CARGO_TARGET_DIR=$(TARGET_DIR)/arm64
SAM_BUILD_DIR := $(CURDIR)/.aws-sam/build
KAFKA_SAM_BUILD_DIR := $(CURDIR)/kafka/.aws-sam/build
ARM64_EMULATOR := qemu-aarch64-static
# cargo-fuzz, installed into the project; the fuzz targets build with nightly.
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ := .tools/bin/cargo-fuzz
FUZZ_TARGETS := sqs_body kafka_event payload
FUZZ_SECONDS ?= 20
# cargo-deny, installed into the project; its own profile's fat LTO is
# turned off, which halves its build and changes nothing it checks.
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY := .tools/bin/cargo-deny

.PHONY: check test lint deny arm64 integration soak template fuzz demo bench venv clean

# The test features: the moto and compiled-binary tests of each crate.
INTEGRATION_FEATURES := terra-sink/integration,terra-sink-ops/integration
# The soak tier's test targets; every other integration test is the
# integration tier's.
SOAK_TESTS := fault_injection lambda_artifacts
INTEGRATION_TESTS := $(filter-out $(SOAK_TESTS),$(basename $(notdir $(wildcard tests/*.rs ops/tests/*.rs))))

# The fast tier: formatting, lints, and the unit and in-process tests (the
# handlers on in-memory stores, the fetcher against local HTTP servers).
# Needs nothing installed; under a minute warm.
check:
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets --features $(INTEGRATION_FEATURES) -- -D warnings
	cargo test --locked --workspace

# Everything: the fast tier's checks, the deployable arm64 build, the tests
# against moto and the compiled handlers, the fault suite and the arm64
# runs, the template, and the fuzz targets. What CI runs.
test: lint deny arm64 integration soak template fuzz

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements-dev.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Cargo.toml's rust-version, a rustup toolchain's name too.
RUST_VERSION := $(shell sed -n 's/^rust-version = "\(.*\)"$$/\1/p' Cargo.toml)

# Also: the handlers build with the oldest toolchain Cargo.toml claims
# (rust-version); what they link has one HTTP/TLS stack (hyper 1, rustls
# 0.23 on aws-lc), none of the AWS SDK defaults' legacy one, and none of
# the operator tool's command-line crates (they belong in ops/).
lint:
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets --features $(INTEGRATION_FEATURES) -- -D warnings
	cargo +$(RUST_VERSION) check --locked -p terra-sink --bins
	! cargo tree --locked -e normal -p terra-sink | grep -E '── (hyper v0\.|h2 v0\.3|rustls v0\.(1|2[0-2])\.|ring v)'
	! cargo tree --locked -e normal -p terra-sink | grep -E '── (clap|indicatif) v'

# Licences and duplicate versions (deny.toml), offline: then the same
# licence check on a crate that depends on a GPL one, which must fail and
# say so, so a check that stopped biting would fail here. The lock file's
# crates for every platform are fetched first: the check reads them all,
# and a fresh machine's builds fetch only this one's.
deny: $(CARGO_DENY)
	cargo fetch --locked
	$(CARGO_DENY) deny --locked --offline check licenses bans
	@if out=$$($(CARGO_DENY) deny --locked --offline --manifest-path tests/licence-check/app/Cargo.toml \
	    --config deny.toml check licenses 2>&1); then \
	  echo "make deny: the licence check passed a GPL-3.0-only dependency" >&2; exit 1; \
	elif ! echo "$$out" | grep -q 'GPL-3.0-only'; then \
	  echo "$$out" >&2; echo "make deny: the licence check failed, but not on the GPL dependency" >&2; exit 1; \
	fi
	@echo "deny: a GPL-3.0-only dependency is refused"

$(CARGO_DENY):
	CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
	  cargo install cargo-deny --version $(CARGO_DENY_VERSION) --locked --root $(CURDIR)/.tools

# `sam build` at the templates' defaults, as a deployer runs it: the SQS
# stack here, the Kafka stack in kafka/ (its own samconfig.toml), both
# handlers for arm64, with the toolchain and emulator the arm64 tests need
# installed first.
arm64: $(VENV_STAMP)
	dev/install-arm64-toolchain.sh
	$(ARM64_TOOLS) sam build
	cd kafka && $(ARM64_TOOLS) sam build

# The tests against moto and the compiled handlers (and the operator tool),
# every integration test but the soak tier's. The handlers are the debug
# builds cargo makes for the tests.
integration: $(VENV_STAMP)
	MOTO_SERVER=$(CURDIR)/$(VENV)/bin/moto_server \
	  cargo test --locked --workspace --features $(INTEGRATION_FEATURES) --lib --bins \
	    $(addprefix --test ,$(INTEGRATION_TESTS))

# The fault suite at the template's ratios, and the deployable artifacts:
# the memory scenarios run the x86_64 Lambda artifact (release), as Lambda
# would, since a debug build neither uses memory nor keeps time the way it
# does; the arm64 ones run under qemu (tests/lambda_artifacts.rs).
soak: $(VENV_STAMP) arm64
	$(TOOLS) cargo lambda build --release --bin sqs-handler
	MOTO_SERVER=$(CURDIR)/$(VENV)/bin/moto_server SQS_HANDLER_ARTIFACT=$(HANDLER_ARTIFACT) \
	  SQS_HANDLER_ARM64_ARTIFACT=$(SAM_BUILD_DIR)/SqsHandlerFunction/bootstrap \
	  KAFKA_HANDLER_ARM64_ARTIFACT=$(KAFKA_SAM_BUILD_DIR)/KafkaHandlerFunction/bootstrap \
	  ARM64_EMULATOR=$(ARM64_EMULATOR) \
	  cargo test --locked --workspace --features $(INTEGRATION_FEATURES) \
	    $(addprefix --test ,$(SOAK_TESTS))

# The templates' promises and cfn-lint through SAM (`make arm64` builds them).
template: $(VENV_STAMP)
	$(VENV)/bin/python -m pytest -q tests/template
	$(TOOLS) sam validate --lint
	cd kafka && $(TOOLS) sam validate --lint

# Each fuzz target for FUZZ_SECONDS, from the seeds plus what earlier runs
# found (fuzz/corpus, not committed). A crash fails the run and is left in
# fuzz/artifacts/; keep it in fuzz/regressions/ once fixed.
fuzz: $(CARGO_FUZZ)
	cd fuzz && for target in $(FUZZ_TARGETS); do \
	  mkdir -p corpus/$$target && \
	  PATH="$(CURDIR)/.tools/bin:$$PATH" cargo +nightly fuzz run --sanitizer none $$target \
	    corpus/$$target seeds/$$target -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

$(CARGO_FUZZ):
	cargo install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked --root $(CURDIR)/.tools

# The whole flow locally, in the stack template.yaml creates: deployed into
# moto with IAM enforced, fed by the Terra simulator through the local SQS
# mapping to the Lambda artifact of sqs-handler.
demo: $(VENV_STAMP)
	$(TOOLS) cargo lambda build --release --bin sqs-handler
	MOTO_SERVER=$(CURDIR)/$(VENV)/bin/moto_server cargo run --locked -p terra-sink-dev --bin demo -- $(HANDLER_ARTIFACT)

# A benchmark, not a test: the deployable binaries driven through the Runtime
# API against local servers; results go into BENCHMARKS.md. perf samples a
# handler built with its symbol table kept (--profile profiling, otherwise
# release); the harness is built in that profile too, so its servers are
# not what is measured and the two share their dependencies' build. The CPU
# quotas of the as-deployed runs need root (a cgroup of their own).
bench: $(VENV_STAMP)
	$(TOOLS) cargo lambda build --release --bin sqs-handler --bin kafka-handler
	cargo build --locked --profile profiling --bin sqs-handler
	MOTO_SERVER=$(CURDIR)/$(VENV)/bin/moto_server \
	  cargo run --locked --profile profiling -p terra-sink-dev --features bench --bin bench -- \
	  $(HANDLER_ARTIFACT) $(KAFKA_ARTIFACT) $(TARGET_DIR)/profiling/sqs-handler BENCHMARKS.md

clean:
	rm -rf $(VENV) target .aws-sam kafka/.aws-sam .tools fuzz/target fuzz/corpus
