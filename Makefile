# Liveness service. `make run` serves locally; `make test` runs every test (what CI runs).
SHELL := /bin/bash
.DEFAULT_GOAL := help
SHARED ?= ../shared
MODELS := models
DOWNLOADS := $(MODELS)/downloads
VENV := .venv
PY := $(VENV)/bin/python
CARGO ?= cargo
export CARGO_TERM_PROGRESS_WHEN = never

.PHONY: help models build test bench lint
help:
	@echo "make models  - fetch/convert every weight file into models/ (sha256-checked)"
	@echo "make build   - release build of the CLI and the Lambda bootstrap"
	@echo "make test    - install tools, build models, run all tests (what CI runs)"
	@echo "make bench   - per-stage and per-network times (LIVENESS_THREADS, default 1)"
	@echo "make run     - serve the API on 127.0.0.1:3000 (development credentials) and print a curl example"
	@echo "make watch / lambda-build / cfn-lint / deploy - Lambda emulator, function zip, template lint, SAM deploy"
	@echo "make test-arm64 - every test that matters on aarch64, under qemu (test-arm64-ci: the documented subset)"
	@echo "make bench-cold-start - cold start of the Lambda zip against a local Runtime API + moto"
	@echo "make bench-peer / bench-peer-pipeline - per network / whole processes beside onnxruntime"
	@echo "make bench-peer-avx2 - the same for the AVX2 machine class (both sides held to AVX2 kernels)"
	@echo "make venv    - pinned Python tools (tools/requirements.txt) into .venv/"

# Python tools (pinned) used by tests and converters; never imported by the service.
$(VENV)/.stamp: tools/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tools/requirements.txt
	touch $@
venv: $(VENV)/.stamp
.PHONY: venv

include $(wildcard mk/*.mk)

# Every weight file the service needs; each rule lives in mk/models-*.mk.
models: system-deps verify-committed-models $(MODEL_FILES)

build: system-deps
	$(CARGO) build --release --locked

# Debian packages the build and the tests need, installed when missing: protoc (candle-onnx
# compiles the ONNX protobufs), the DejaVu font (text of `liveness eval --plot`), Chromium and
# its WebDriver (the demo page's browser tests, tests/demo_page.rs).
SYSTEM_PACKAGES += protobuf-compiler fonts-dejavu-core chromium chromium-driver
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi
.PHONY: system-deps

# The aarch64 subset (mk/arm64.mk: cross-built, run under qemu) follows the host tests; on a clean
# clone it adds ~15 min on 2 cores (its cross build ~11 of them). `make test-arm64` runs every
# arm64 check.
test: system-deps models venv
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings
	$(CARGO) test --release --locked
	$(MAKE) --no-print-directory test-arm64-ci

bench: models
	$(CARGO) run --release --locked --bin liveness -- bench
