#!/usr/bin/env python3
"""The onnxruntime reference pipeline of ../shared/reference/timing.md, row (b), as one process
over many photos: OpenCV decode, RetinaFace-mnet0.25 at long side 640 (numpy priors and NMS),
MiniFASNetV2 (scale 2.7) and MiniFASNetV1SE (scale 4.0) on the Silent-Face crops (OpenCV resize
to 80x80, BGR 0-255), score = mean of the two live probabilities. No quality gate.

`make bench-peer-pipeline` (tools/bench_peer.py --pipeline) times this whole process beside
`liveness check` on the same photos. It prints one JSON line per photo (score or error), so the
two can also be compared photo by photo; it is a timing reference, never part of the service.

    python tools/reference_pipeline.py PHOTO...
"""
import json
import os
import sys

import cv2
import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
RETINAFACE = os.path.join(ROOT, "models/downloads/retinaface_mnet025.onnx")
MINIFASNETS = [  # (graph, crop scale)
    (os.path.join(SHARED, "models/minifasnet/onnx/2.7_80x80_MiniFASNetV2.onnx"), 2.7),
    (os.path.join(SHARED, "models/minifasnet/onnx/4_0_0_80x80_MiniFASNetV1SE.onnx"), 4.0),
]
LONG_SIDE = 640
MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
MIN_SIZES = [[16, 32], [64, 128], [256, 512]]
STEPS = [8, 16, 32]
VARIANCE = (0.1, 0.2)
SCORE_THRESHOLD = 0.5
NMS_IOU = 0.4


# onnxruntime's intra-op threads (1 by default, as in timing.md; `make bench-peer-pipeline`
# also runs it with 2, beside `liveness check` with 2).
THREADS = int(os.environ.get("REFERENCE_THREADS", "1"))


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    if THREADS > 1:
        # A spinning worker takes the CPU that OpenCV (2 threads of its own) and numpy need
        # between runs: 1.6x slower than 1 thread over 60 dev photos, 0.8x without spinning.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def priors(h, w):
    """RetinaFace anchors (cx, cy, w, h), normalised, in the network's output order."""
    out = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        fh, fw = -(-h // step), -(-w // step)
        ys, xs = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
        cx = ((xs + 0.5) * step / w).reshape(-1, 1)
        cy = ((ys + 0.5) * step / h).reshape(-1, 1)
        per_size = [np.hstack([cx, cy, np.full_like(cx, s / w), np.full_like(cy, s / h)]) for s in sizes]
        out.append(np.stack(per_size, axis=1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def nms(boxes, scores):
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.maximum(0.0, xx2 - xx1) * np.maximum(0.0, yy2 - yy1)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
        iou = inter / (area(boxes[i]) + area(boxes[order[1:]]) - inter)
        order = order[1:][iou <= NMS_IOU]
    return keep


def detect(net, img):
    """The best face as (x, y, w, h) in pixels of `img`, or None."""
    h, w = img.shape[:2]
    scale = LONG_SIDE / max(h, w)
    small = cv2.resize(img, (round(w * scale), round(h * scale))) if scale != 1 else img
    sh, sw = small.shape[:2]
    x = (small.astype(np.float32) - MEAN_BGR).transpose(2, 0, 1)[None]
    loc, conf, _ = net.run(None, {"input": np.ascontiguousarray(x)})
    p = priors(sh, sw)
    centre = p[:, :2] + loc[0, :, :2] * VARIANCE[0] * p[:, 2:]
    size = p[:, 2:] * np.exp(loc[0, :, 2:] * VARIANCE[1])
    boxes = np.hstack([centre - size / 2, centre + size / 2]) * np.array([sw, sh, sw, sh], np.float32)
    scores = conf[0, :, 1]
    mask = scores >= SCORE_THRESHOLD
    boxes, scores = boxes[mask], scores[mask]
    if not len(scores):
        return None
    best = boxes[nms(boxes, scores)[0]] / scale
    return best[0], best[1], best[2] - best[0], best[3] - best[1]


def crop(img, box, scale):
    """Silent-Face's CropImage: the box scaled about its centre, shifted inside the image."""
    src_h, src_w = img.shape[:2]
    x, y, box_w, box_h = box
    scale = min((src_h - 1) / box_h, min((src_w - 1) / box_w, scale))
    new_w, new_h = box_w * scale, box_h * scale
    cx, cy = box_w / 2 + x, box_h / 2 + y
    x0, y0 = cx - new_w / 2, cy - new_h / 2
    x1, y1 = cx + new_w / 2, cy + new_h / 2
    if x0 < 0:
        x1 -= x0
        x0 = 0
    if y0 < 0:
        y1 -= y0
        y0 = 0
    if x1 > src_w - 1:
        x0 -= x1 - src_w + 1
        x1 = src_w - 1
    if y1 > src_h - 1:
        y0 -= y1 - src_h + 1
        y1 = src_h - 1
    patch = img[int(y0):int(y1) + 1, int(x0):int(x1) + 1]
    return cv2.resize(patch, (80, 80))


def live_probability(net, patch):
    x = patch.astype(np.float32).transpose(2, 0, 1)[None]
    logits = net.run(None, {"input": np.ascontiguousarray(x)})[0][0]
    e = np.exp(logits - logits.max())
    return float(e[1] / e.sum())


def main():
    cv2.setNumThreads(1)
    detector = session(RETINAFACE)
    classifiers = [(session(path), scale) for path, scale in MINIFASNETS]
    for path in sys.argv[1:]:
        line = {"file": os.path.basename(path)}
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        box = None if img is None else detect(detector, img)
        if img is None:
            line["error"] = "INVALID_IMAGE"
        elif box is None:
            line["error"] = "FACE_NOT_FOUND"
        else:
            probs = [live_probability(net, crop(img, box, scale)) for net, scale in classifiers]
            line["score"] = sum(probs) / len(probs)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
