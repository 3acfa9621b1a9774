# `make bench-peer`: per-network forward times of our kernels beside onnxruntime (same ONNX graphs,
# same input sizes, 1 thread each unless --threads), alternating in one run on this machine. onnxruntime lives
# only in the pinned venv (tools/requirements-bench.txt, installed here on demand), never in the
# service.
#   BENCH_PEER_ARGS="--rounds 9 --iterations 30"   more samples
#   BENCH_PEER_ARGS="--threads 2"                   both sides on 2 threads
#   BENCH_PEER_ARGS="--ort-layers RetinaFace"       onnxruntime's per-node profile of one network,
#                                                   beside `liveness bench --layers`
BENCH_PEER_ARGS ?=

$(VENV)/.bench-stamp: tools/requirements-bench.txt $(VENV)/.stamp
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tools/requirements-bench.txt
	touch $@

bench-peer: $(VENV)/.bench-stamp models
	$(CARGO) build --release --locked --bin liveness
	$(PY) tools/bench_peer.py --liveness $(or $(CARGO_TARGET_DIR),target)/release/liveness $(BENCH_PEER_ARGS)

# `make bench-peer-pipeline`: whole processes over the faces-dev live and spoof photos, the
# onnxruntime reference pipeline (tools/reference_pipeline.py) beside `liveness check` with 1 and
# 2 threads, alternating.
bench-peer-pipeline: $(VENV)/.bench-stamp models
	$(CARGO) build --release --locked --bin liveness
	$(PY) tools/bench_peer.py --pipeline --liveness $(or $(CARGO_TARGET_DIR),target)/release/liveness $(BENCH_PEER_ARGS)

# `make bench-peer-avx2`: the AVX2 machine class on whatever CPU this is: our build without the
# `avx512` feature (its own target directory, so the default build stays) beside onnxruntime made
# to pick its AVX2 kernels (tools/ort_avx2.py). BENCH_PEER_ARGS as above, e.g. "--pipeline".
AVX2_TARGET_DIR = $(or $(CARGO_TARGET_DIR),target)/avx2
bench-peer-avx2: $(VENV)/.bench-stamp models
	CARGO_TARGET_DIR=$(AVX2_TARGET_DIR) $(CARGO) build --release --locked --no-default-features --bin liveness
	$(PY) tools/bench_peer.py --ort-avx2 --liveness $(AVX2_TARGET_DIR)/release/liveness $(BENCH_PEER_ARGS)
.PHONY: bench-peer bench-peer-pipeline bench-peer-avx2
