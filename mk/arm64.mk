# aarch64 (Lambda arm64): the tests cross-built for aarch64-unknown-linux-gnu and run under qemu
# user-mode emulation (issue 8). Included from the main Makefile; see docs/api.md ("arm64").
#
#   make test-arm64      every arm64 check: kernel and library unit tests, every network's golden,
#                        oracle and dev-set tests, truncated/odd image decoding, NEON code in the
#                        kernels, and all dev photos scored on aarch64 vs x86-64 (|diff| <= 1e-4,
#                        same outcome)
#   make test-arm64-ci   the subset `make test` runs (see ARM64_CI_* below)
#   make test-arm64-package  the arm64 zip from `make lambda-build LAMBDA_ARCH=arm64` (written to
#                        $(ARM64_LAMBDA_DIR), not the template's CodeUri) started under qemu
#                        against a local Runtime API with its secret in moto, answering requests;
#                        part of `make test-arm64`
#   make arm64-deps      the Rust target and the Debian packages the above need
#
# Builds go to their own target directory ($(ARM64_TARGET_DIR)), never the shared target/.
# The linker is Debian's aarch64 cross gcc, which the test binaries also use to find the C
# libraries they link (glibc from libc6-arm64-cross, which qemu loads via -L). Code is compiled
# for the CPU of Lambda's arm64 functions (Graviton2 = Neoverse N1), as cargo-lambda compiles the
# deployed binary.

ARM64_TRIPLE := aarch64-unknown-linux-gnu
ARM64_TARGET_DIR ?= target-aarch64
ARM64_SYSROOT := /usr/aarch64-linux-gnu
ARM64_CPU := neoverse-n1
ARM64_ENV := CARGO_TARGET_DIR=$(ARM64_TARGET_DIR) \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-cpu=$(ARM64_CPU)" \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L $(ARM64_SYSROOT)"
ARM64_TEST := $(ARM64_ENV) $(CARGO) test --release --locked --target $(ARM64_TRIPLE)
# Debian packages: the emulator, the aarch64 glibc it loads, the cross linker (+ objdump).
ARM64_DEBIAN_PACKAGES := qemu-user-static libc6-arm64-cross gcc-aarch64-linux-gnu

# The networks' golden and oracle tests. The dev-set tests among them (RetinaFace boxes on every
# dev photo, FaceMesh pitch calibration, mask classifier on the dev set) take minutes each under
# emulation: the CI subset skips them, `make test-arm64` runs them.
ARM64_NETWORK_TESTS := --test retinaface --test minifasnet --test antispoof128 --test facemesh --test mask
# Skipped everywhere under emulation: tests that spawn the project's own binaries (no binfmt_misc
# here to run them through qemu; the converter is a build tool, not part of the function).
ARM64_SKIP := --skip converter_reproduces_the_committed_weights
ARM64_CI_SKIP := $(ARM64_SKIP) --skip dev_set_boxes_match_onnxruntime_reference \
	--skip pitch_zero_is_calibrated_on_live_dev_faces \
	--skip dev_set_masked_faces_are_flagged_and_live_faces_are_not
# Dev photos compared across architectures: all in `make test-arm64`; in CI every 4th of the
# labels in file-name order (the 1st, 5th, 9th, ...: 34 of 133, all classes represented).
ARM64_CI_SCORES_EVERY := 4
ARM64_SCORES_X86 := $(ARM64_TARGET_DIR)/arch-scores-x86_64.json

.PHONY: arm64-deps rust-target-aarch64 test-arm64 test-arm64-ci test-arm64-package arm64-build-tests arm64-check-neon

rust-target-aarch64:
	@rustup target list --installed | grep -qx $(ARM64_TRIPLE) || rustup target add $(ARM64_TRIPLE)

arm64-deps: rust-target-aarch64
	@missing=$$(for p in $(ARM64_DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

arm64-build-tests: arm64-deps models
	$(ARM64_TEST) --no-run --lib $(ARM64_NETWORK_TESTS) --test arch_scores --test image_integrity

# The depthwise kernel and the GEMM epilogue must be NEON code (auto-vectorised: 4-lane fmla,
# fcmlt/bit selects), not scalar loops.
arm64-check-neon: arm64-build-tests
	tools/check_neon.sh $$($(ARM64_TEST) --no-run --lib --message-format=json 2>/dev/null \
		| python3 -c 'import json,sys; print(*[m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["kind"] == ["lib"]])')

# $(call arm64_compare_scores,EVERY): every EVERY-th dev photo scored by the host (x86-64) build
# (shared target/, as `make test` builds it), then on aarch64 under qemu and compared.
define arm64_compare_scores
	@mkdir -p $(ARM64_TARGET_DIR)
	LIVENESS_ARCH_SCORES_OUT=$(ARM64_SCORES_X86) LIVENESS_ARCH_SCORES_EVERY=$(1) \
		$(CARGO) test --release --locked --test arch_scores -- --ignored --nocapture
	LIVENESS_ARCH_SCORES_REFERENCE=$(ARM64_SCORES_X86) LIVENESS_ARCH_SCORES_EVERY=$(1) \
		$(ARM64_TEST) --test arch_scores -- --ignored --nocapture
endef

test-arm64: arm64-build-tests arm64-check-neon
	$(ARM64_TEST) --lib $(ARM64_NETWORK_TESTS) --test image_integrity -- $(ARM64_SKIP)
	$(call arm64_compare_scores,1)
	$(MAKE) --no-print-directory test-arm64-package

ARM64_LAMBDA_DIR := build/lambda-arm64
test-arm64-package: arm64-deps venv
	$(MAKE) --no-print-directory lambda-build LAMBDA_ARCH=arm64 LAMBDA_DIR=$(ARM64_LAMBDA_DIR)
	LIVENESS_COLD_START_PACKAGE=$(CURDIR)/$(ARM64_LAMBDA_DIR)/bootstrap.zip \
		LIVENESS_COLD_START_RUNNER="qemu-aarch64-static -L $(ARM64_SYSROOT)" \
		$(CARGO) test --release --locked --test lambda_cold_start -- --nocapture packaged_bootstrap_starts_and_answers

test-arm64-ci: arm64-build-tests arm64-check-neon
	$(ARM64_TEST) --lib $(ARM64_NETWORK_TESTS) -- $(ARM64_CI_SKIP)
	$(call arm64_compare_scores,$(ARM64_CI_SCORES_EVERY))
