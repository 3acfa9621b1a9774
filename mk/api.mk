# HTTP API / Lambda targets (issue 3). Included from the main Makefile; see docs/api.md.
#
#   make run           `liveness serve` on 127.0.0.1:$(PORT) (development credentials unless
#                      LIVENESS_BASIC_AUTH / LIVENESS_SECRET_ID are set); prints a curl example
#   make watch         the Lambda binary under `cargo lambda watch` on 127.0.0.1:$(WATCH_PORT)
#   make lambda-build  the function zip $(LAMBDA_ZIP) (stripped bootstrap + models/) for
#                      LAMBDA_ARCH (x86_64, the template's default, or arm64); prints its contents
#   make bench-cold-start  cold start of that zip (x86_64) against a local Runtime API + moto
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
LAMBDA_DIR ?= build/lambda
# What template.yaml deploys (CodeUri), its unzipped layout, and the stripped symbols.
LAMBDA_ZIP := $(LAMBDA_DIR)/bootstrap.zip
LAMBDA_PKG := $(LAMBDA_DIR)/package
LAMBDA_DEBUG := $(LAMBDA_DIR)/bootstrap.debug
# Function architecture: x86_64 (the template's default: the path whose speed is measured) or
# arm64 (cheaper per GB-second; correctness checked under emulation by `make test-arm64`).
LAMBDA_ARCH ?= x86_64
# cargo-lambda's own target directory (its release profile differs from target/'s: thin LTO,
# panic=abort, and for arm64 -C target-cpu=neoverse-n1).
LAMBDA_TARGET_DIR ?= target-lambda
LAMBDA_ZIP_TARGET_MB := 20
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

# cargo-lambda builds with zig (PyPI ziglang, in .venv) as linker, against an old glibc that
# provided.al2023 satisfies; arm64 also needs the aarch64-unknown-linux-gnu Rust target (installed
# here). tools/lambda_package.py strips every symbol into $(LAMBDA_DEBUG) (kept out of the zip,
# for symbolising backtraces) and zips bootstrap + $(MODEL_FILES) (calibration.json included).
lambda-build: models venv $(if $(filter arm64,$(LAMBDA_ARCH)),rust-target-aarch64)
	@case "$(LAMBDA_ARCH)" in x86_64|arm64) ;; *) echo "LAMBDA_ARCH must be x86_64 or arm64" >&2; exit 1;; esac
	CARGO_TARGET_DIR=$(LAMBDA_TARGET_DIR) $(WITH_VENV) cargo lambda build --release --locked \
		$(if $(filter arm64,$(LAMBDA_ARCH)),--arm64,--x86-64) --bin bootstrap --lambda-dir $(LAMBDA_DIR)/cargo-lambda
	$(PY) tools/lambda_package.py $(LAMBDA_DIR)/cargo-lambda/bootstrap/bootstrap $(LAMBDA_PKG) \
		--debug-file $(LAMBDA_DEBUG) --zip $(LAMBDA_ZIP) $(MODEL_FILES)
	@size=$$(stat -c %s $(LAMBDA_ZIP)); \
	echo "$(LAMBDA_ZIP): $(LAMBDA_ARCH), $$size bytes; target <= $(LAMBDA_ZIP_TARGET_MB) MB: $$( [ $$size -le $$(( $(LAMBDA_ZIP_TARGET_MB) * 1000000 )) ] && echo met || echo MISSED)"

# Cold start of the x86_64 zip against a local Lambda Runtime API with Secrets Manager on
# moto_server (tests/lambda_cold_start.rs, `cold_start_bench`): a table of exec -> ready, first,
# second and warm invocation and peak RSS; fails when the targets are missed.
bench-cold-start: venv
	$(MAKE) --no-print-directory lambda-build LAMBDA_ARCH=x86_64
	LIVENESS_COLD_START_PACKAGE=$(CURDIR)/$(LAMBDA_ZIP) \
		$(CARGO) test --release --locked --test lambda_cold_start -- --ignored --nocapture cold_start_bench
.PHONY: bench-cold-start

cfn-lint: venv
	$(VENV)/bin/cfn-lint template.yaml

deploy: lambda-build cfn-lint
	$(SAM) deploy --template-file template.yaml --stack-name $(STACK_NAME) \
		--capabilities CAPABILITY_IAM --resolve-s3 --no-fail-on-empty-changeset \
		--parameter-overrides Architecture=$(LAMBDA_ARCH) $(if $(SECRET_ARN),CredentialsSecretArn=$(SECRET_ARN))
