#!/usr/bin/env python3
"""A copy of the pinned onnxruntime that runs its AVX2 kernels on an AVX-512 CPU, for benchmarks only.

onnxruntime (MLAS) picks its kernels from `cpuid` and from XCR0, the register that says which
vector state the OS saves; a process can mask neither. On a machine with AVX-512 it therefore
always runs its AVX-512 kernels, and `make bench-peer-avx2` could not compare our AVX2 build with
onnxruntime's AVX2 kernels. This tool copies the installed package and rewrites the four `xgetbv`
instructions (the only XCR0 reads in the extension) as `push 7; pop rax`: XCR0 then reports x87,
SSE and AVX state but no opmask or ZMM state, which is what an OS that does not enable AVX-512
reports, and every AVX-512 check of onnxruntime fails while its AVX2/FMA checks pass.

The offsets belong to one file: the extension of onnxruntime 1.23.2 (tools/requirements-bench.txt),
checked by its sha256 before anything is written; any other file is refused. Verified on Zen 5
(`perf record` of the mask classifier: the hot loops are `vfmadd231ps` on ymm registers after
the patch; on the six networks of `bench_peer.py` the outputs differ from the unpatched
package's by float rounding only, at most 7.6e-5 on values up to 163).

    python tools/ort_avx2.py DEST      # writes DEST/onnxruntime; then PYTHONPATH=DEST python ...
"""
import hashlib
import os
import shutil
import sys

import onnxruntime

EXTENSION = "capi/onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so"
SHA256 = "f22a6994fbadefe3888cd3a5300a63021884372dafecaea9875987dce697c8c1"
# File offsets of the `xgetbv` instructions (0f 01 d0) in .text, found with `objdump -d`.
XGETBV_OFFSETS = (0x32993E, 0xDE0F24, 0xDF5635, 0x1128DF6)
XGETBV = b"\x0f\x01\xd0"
# push 7; pop rax (3 bytes, as `xgetbv`): XCR0 = 0b111 (x87, SSE, AVX). It leaves rsp as it was
# but writes the 8 bytes below it, which a leaf function's red zone could hold; the functions
# patched are not leaves (they call), and the outputs check above held.
XCR0_AVX_ONLY = b"\x6a\x07\x58"


def prepare(dest):
    """Writes the patched package to DEST/onnxruntime (again when the pinned build changed) and
    returns DEST."""
    target = os.path.join(dest, "onnxruntime")
    marker = os.path.join(target, ".avx2-only")  # holds the sha256 of the file it was made from
    if os.path.exists(marker) and open(marker).read() == SHA256:
        return dest
    source = os.path.dirname(onnxruntime.__file__)
    with open(os.path.join(source, EXTENSION), "rb") as f:
        data = bytearray(f.read())
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        sys.exit(f"ort_avx2: {EXTENSION} has sha256 {digest}, not the pinned build's {SHA256}")
    for offset in XGETBV_OFFSETS:
        if data[offset:offset + 3] != XGETBV:
            sys.exit(f"ort_avx2: no xgetbv at {offset:#x}")
        data[offset:offset + 3] = XCR0_AVX_ONLY
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    with open(os.path.join(target, EXTENSION), "wb") as f:
        f.write(data)
    with open(marker, "w") as f:
        f.write(SHA256)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(prepare(sys.argv[1]))
