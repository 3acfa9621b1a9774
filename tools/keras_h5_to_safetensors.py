#!/usr/bin/env python3
"""Convert the weights of a Keras full-model HDF5 file to safetensors, without running any Keras code.

Usage: keras_h5_to_safetensors.py MODEL.h5 OUT.safetensors

Reads only `model_weights` (h5py + numpy; no TensorFlow, no model code). Every weight
`<layer>/<layer>/<name>:0` becomes the tensor `<layer>.<name>`, unchanged: same dtype (float32 only),
same shape and layout as Keras stores it (conv kernels HWIO, depthwise kernels H,W,C,1, dense kernels
[in, out]); BatchNorm is not folded. The safetensors file is written directly (8-byte little-endian
header length, JSON header, raw little-endian data), with sorted names and no metadata that could vary,
so the output is byte-for-byte reproducible.
"""

import json
import struct
import sys

import h5py
import numpy as np


def as_str(value):
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def read_weights(path):
    """Returns {tensor name: float32 array} for every weight of every layer, in file order."""
    tensors = {}
    with h5py.File(path, "r") as f:
        group = f["model_weights"]
        for layer in (as_str(n) for n in group.attrs["layer_names"]):
            layer_group = group[layer]
            for weight in (as_str(n) for n in layer_group.attrs.get("weight_names", [])):
                owner, _, leaf = weight.rpartition("/")
                if owner != layer or not leaf.endswith(":0"):
                    raise SystemExit(f"unexpected weight name {weight!r} in layer {layer!r}")
                array = np.asarray(layer_group[weight])
                if array.dtype != np.float32:
                    raise SystemExit(f"{weight}: dtype {array.dtype}, expected float32")
                name = f"{layer}.{leaf[:-2]}"
                if name in tensors:
                    raise SystemExit(f"duplicate tensor name {name}")
                tensors[name] = np.ascontiguousarray(array, dtype="<f4")
    if not tensors:
        raise SystemExit(f"{path}: no weights found")
    return tensors


def write_safetensors(tensors, path):
    header = {}
    offset = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        header[name] = {
            "dtype": "F32",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for name in sorted(tensors):
            out.write(tensors[name].tobytes())


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    tensors = read_weights(sys.argv[1])
    write_safetensors(tensors, sys.argv[2])
    total = sum(t.size for t in tensors.values())
    print(f"{sys.argv[2]}: {len(tensors)} tensors, {total} parameters")


if __name__ == "__main__":
    main()
