# HTTP API / Lambda targets (issue 3). Included from the main Makefile.
#
#   make venv          Python tools into .venv/ (moto_server for tests, cfn-lint, cargo-lambda, zig)
#   make run           local server on 127.0.0.1:$(PORT) with development credentials
#   make watch         cargo lambda watch (Lambda emulator) on the bootstrap binary
#   make lambda-build  arm64 Lambda bundle with the model files included
#   make cfn-lint      lint template.yaml
#   make deploy        sam deploy (needs AWS credentials and the SAM CLI; not run in CI)

VENV ?= .venv
PYTHON ?= python3
PORT ?= 3000

# Pinned tool versions.
MOTO_VERSION ?= 5.2.5
CFN_LINT_VERSION ?= 1.58.0
CARGO_LAMBDA_VERSION ?= 1.9.2
ZIGLANG_VERSION ?= 0.13.0
# Used by tests/api_openapi_check.py (also pulled in by moto[server]; pinned here).
OPENAPI_SPEC_VALIDATOR_VERSION ?= 0.9.0
OPENAPI_SCHEMA_VALIDATOR_VERSION ?= 0.9.0
PYYAML_VERSION ?= 6.0.4

VENV_STAMP := $(VENV)/.api-tools-installed

.PHONY: venv run watch lambda-build cfn-lint deploy

venv: $(VENV_STAMP)

$(VENV_STAMP): mk/api.mk
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet \
		"moto[server]==$(MOTO_VERSION)" \
		"cfn-lint==$(CFN_LINT_VERSION)" \
		"cargo-lambda==$(CARGO_LAMBDA_VERSION)" \
		"ziglang==$(ZIGLANG_VERSION)" \
		"openapi-spec-validator==$(OPENAPI_SPEC_VALIDATOR_VERSION)" \
		"openapi-schema-validator==$(OPENAPI_SCHEMA_VALIDATOR_VERSION)" \
		"PyYAML==$(PYYAML_VERSION)"
	touch $@
