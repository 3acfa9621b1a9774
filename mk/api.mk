# HTTP API / Lambda targets (issue 3). Included from the main Makefile; see docs/api.md.
#
#   make run           `liveness serve` on 127.0.0.1:$(PORT) (development credentials unless
#                      LIVENESS_BASIC_AUTH / LIVENESS_SECRET_ID are set); prints a curl example
#   make watch         the Lambda binary under `cargo lambda watch` on 127.0.0.1:$(WATCH_PORT)
#   make lambda-build  arm64 Lambda package in $(LAMBDA_PKG)/ (bootstrap + models/)
#   make cfn-lint      lint template.yaml
#   make deploy        lambda-build + `sam deploy` (needs AWS credentials and the SAM CLI)

PYTHON ?= python3
CARGO ?= cargo
PORT ?= 3000
WATCH_PORT ?= 9000
SHARED ?= ../shared
STACK_NAME ?= liveness
SAM ?= sam
# Existing credentials secret for `make deploy`; empty lets the stack create one.
SECRET_ARN ?=

DEV_CREDENTIALS := dev:liveness-dev
WITH_VENV := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"
LAMBDA_DIR := build/lambda
LAMBDA_PKG := $(LAMBDA_DIR)/bootstrap
# Any photo of a face; `make run DEMO_IMAGE=me.jpg` prints the curl line for it.
DEMO_IMAGE ?= photo.jpg

.PHONY: run watch lambda-build cfn-lint deploy

run: models
	$(CARGO) build --release --locked --bin liveness
	@echo
	@echo "Serving POST http://127.0.0.1:$(PORT)/api/v1/face/liveness"
	@echo "Credentials: $(DEV_CREDENTIALS) (development default) unless LIVENESS_BASIC_AUTH or LIVENESS_SECRET_ID is set."
	@echo "Try, in another shell:"
	@echo "  ( printf '{\"sessionId\":\"demo-1\",\"faceImageBase\":\"'; base64 -w0 $(DEMO_IMAGE); printf '\"}' ) \\"
	@echo "    | curl -s -u $(DEV_CREDENTIALS) -H 'Content-Type: application/json' --data-binary @- http://127.0.0.1:$(PORT)/api/v1/face/liveness"
	@echo
	$(CARGO) run --release --locked --bin liveness -- serve --port $(PORT)

# cargo-lambda ignores --target-dir for watch; it honours CARGO_TARGET_DIR (passed through).
watch: models venv
	@echo "Lambda emulator: POST http://127.0.0.1:$(WATCH_PORT)/api/v1/face/liveness with -u $(DEV_CREDENTIALS)"
	$(WITH_VENV) cargo lambda watch --release --bin bootstrap \
		--invoke-address 127.0.0.1 --invoke-port $(WATCH_PORT) \
		--env-var LIVENESS_BASIC_AUTH=$(DEV_CREDENTIALS) \
		--env-var LIVENESS_MODEL_DIR=$(CURDIR)/models

# Needs the aarch64-unknown-linux-gnu Rust target (`rustup target add aarch64-unknown-linux-gnu`);
# zig (PyPI ziglang, in .venv) is the cross linker. The binary's debug line tables are kept (readable
# backtraces) but compressed (~90 MB -> ~40 MB).
lambda-build: models venv
	$(WITH_VENV) cargo lambda build --release --locked --arm64 --bin bootstrap --lambda-dir $(LAMBDA_DIR)
	$(VENV)/bin/python -m ziglang objcopy --compress-debug-sections $(LAMBDA_PKG)/bootstrap $(LAMBDA_PKG)/bootstrap.tmp
	mv $(LAMBDA_PKG)/bootstrap.tmp $(LAMBDA_PKG)/bootstrap
	rm -rf $(LAMBDA_PKG)/models
	mkdir -p $(LAMBDA_PKG)/models
	install -m 644 $(MODEL_FILES) $(LAMBDA_PKG)/models/
	@echo "Lambda package in $(LAMBDA_PKG)/ (bootstrap + models/): the CodeUri of template.yaml"

cfn-lint: venv
	$(VENV)/bin/cfn-lint template.yaml

deploy: lambda-build cfn-lint
	$(SAM) deploy --template-file template.yaml --stack-name $(STACK_NAME) \
		--capabilities CAPABILITY_IAM --resolve-s3 --no-fail-on-empty-changeset \
		$(if $(SECRET_ARN),--parameter-overrides CredentialsSecretArn=$(SECRET_ARN))
