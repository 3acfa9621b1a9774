#!/usr/bin/env python3
"""Per-network forward time of `liveness bench` beside onnxruntime on the same ONNX graphs, same
input sizes, same number of threads (--threads, 1 by default: onnxruntime's intra-op threads,
our LIVENESS_THREADS), in one run on one machine (`make bench-peer`).

Rounds alternate: onnxruntime times every network, then `liveness bench` (networks only, via
`--networks-only`) does, so both see the same machine load; the table gives each
side's median over all rounds of the per-round medians, and the ratio ours / onnxruntime.
onnxruntime stays here, in the pinned venv (tools/requirements.txt): the service never loads it.

Graphs: RetinaFace from `make models` (models/downloads), MiniFASNet V2/V1SE and the 128 model
from ../shared, FaceMesh converted from the TFLite file with tflite2onnx, the mask classifier
built by tools/mask_to_onnx.py; converted graphs are cached in $BENCH_PEER_DIR (target/bench-peer).

    python tools/bench_peer.py [--liveness target/release/liveness] [--rounds 5] [--iterations 20]

With --ort-layers NAME it prints onnxruntime's own per-node profile of one network (median per
node over --iterations runs), to set beside `liveness bench --layers`.

With --pipeline it times whole processes instead: tools/reference_pipeline.py (onnxruntime
RetinaFace at long side 640 + MiniFASNetV2 + V1SE, no gate: ../shared/reference/timing.md row
(b); also with 2 intra-op threads) and `liveness check` (gate and all three anti-spoof networks)
with 1 and 2 threads, each one process over the live and spoof photos of faces-dev,
alternating, wall time from exec to exit. Ratios are to the reference with 1 thread.

With --ort-avx2 onnxruntime runs its AVX2 kernels even on an AVX-512 CPU (a patched copy of the
pinned package, see tools/ort_avx2.py); pair it with our build without the `avx512` feature
(`make bench-peer-avx2`) to compare the AVX2 machine class on this machine.
"""
import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Set (to the patched package's directory) in the process that runs with --ort-avx2.
ORT_AVX2_ENV = "BENCH_PEER_ORT_AVX2"
SHARED = os.path.join(ROOT, "..", "shared")

# (name printed by `liveness bench`, onnx path or builder, input shape, low, high)
def networks(cache):
    return [
        ("RetinaFace 320x240", os.path.join(ROOT, "models/downloads/retinaface_mnet025.onnx"),
         (1, 3, 240, 320), -128.0, 128.0),
        ("minifasnet_v2 80x80", os.path.join(SHARED, "models/minifasnet/onnx/2.7_80x80_MiniFASNetV2.onnx"),
         (1, 3, 80, 80), 0.0, 255.0),
        ("minifasnet_v1se 80x80",
         os.path.join(SHARED, "models/minifasnet/onnx/4_0_0_80x80_MiniFASNetV1SE.onnx"),
         (1, 3, 80, 80), 0.0, 255.0),
        ("minifasnet_v2se_128 128x128",
         os.path.join(SHARED, "models/face-antispoof-128/face_antispoof_minifasv2se_128.onnx"),
         (1, 3, 128, 128), 0.0, 1.0),
        ("FaceMesh 192x192", os.path.join(cache, "face_landmark_468.onnx"), (1, 3, 192, 192), 0.0, 1.0),
        ("mask classifier 224x224", os.path.join(cache, "mask_classifier.onnx"), (1, 3, 224, 224), -1.0, 1.0),
    ]


def convert(cache):
    os.makedirs(cache, exist_ok=True)
    facemesh = os.path.join(cache, "face_landmark_468.onnx")
    if not os.path.exists(facemesh):
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "tflite2onnx"),
                        os.path.join(ROOT, "models/downloads/face_landmark.tflite"), facemesh + ".tmp"],
                       check=True)
        os.replace(facemesh + ".tmp", facemesh)
    mask = os.path.join(cache, "mask_classifier.onnx")
    if not os.path.exists(mask):
        subprocess.run([sys.executable, os.path.join(ROOT, "tools/mask_to_onnx.py"),
                        os.path.join(ROOT, "models/face_mask_detector.safetensors"), mask + ".tmp"],
                       check=True)
        os.replace(mask + ".tmp", mask)


def session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def time_ort(sess, x, iterations):
    feed = {sess.get_inputs()[0].name: x}
    sess.run(None, feed)
    samples = []
    for _ in range(iterations):
        t = time.perf_counter()
        sess.run(None, feed)
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples), min(samples)


LINE = re.compile(r"^\s+(.+?)\s{2,}([0-9.]+) \(([0-9.]+)-([0-9.]+)\)$")


def time_ours(binary, iterations, env):
    out = subprocess.run([binary, "bench", "--networks-only", "--iterations", str(iterations)], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True).stdout
    times = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            times[m.group(1).strip()] = (float(m.group(2)), float(m.group(3)))
    return times


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def wall_seconds(cmd, env):
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def bench_pipelines(args):
    dev = os.path.join(SHARED, "data/faces-dev")
    photos = sorted(os.path.join(dev, f) for f in os.listdir(dev) if f.startswith(("live_", "spoof_")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # (name, command, environment): the environment is the process's, threads set explicitly.
    reference = [sys.executable, os.path.join(ROOT, "tools/reference_pipeline.py")]
    runs = [("onnxruntime reference (b), no gate", reference, env),
            ("onnxruntime reference (b), 2 intra-op threads", reference, dict(env, REFERENCE_THREADS="2"))]
    for threads in (1, 2):
        runs.append((f"liveness check, LIVENESS_THREADS={threads}", [args.liveness, "check"],
                     dict(env, LIVENESS_THREADS=str(threads))))
    times = {name: [] for name, _, _ in runs}
    load = [os.getloadavg()]
    for _ in range(args.rounds):
        for name, cmd, run_env in runs:
            times[name].append(wall_seconds(cmd + photos, run_env))
    load.append(os.getloadavg())
    print(f"CPU: {cpu_name()} ({os.cpu_count()} CPUs); {ort_name()}, 1 intra-op thread")
    print(f"{len(photos)} photos (faces-dev live + spoof), one process each, {args.rounds} rounds alternating; "
          f"loadavg before {load[0][0]:.2f}, after {load[1][0]:.2f}")
    print("| process | wall s, median (min) | ms per photo | ratio to reference |")
    print("|---|---|---|---|")
    reference = statistics.median(next(iter(times.values())))
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} ({min(values):.2f}) | {med / len(photos) * 1e3:.1f} | {med / reference:.2f} |")


def ort_layers(args):
    import json
    cache = os.environ.get("BENCH_PEER_DIR", os.path.join(ROOT, "target/bench-peer"))
    convert(cache)
    matches = [n for n in networks(cache) if n[0].startswith(args.ort_layers)]
    if not matches:
        sys.exit(f"no network named {args.ort_layers!r}; names: {[n[0] for n in networks(cache)]}")
    name, path, shape, lo, hi = matches[0]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(cache, "ort-profile")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).uniform(lo, hi, shape).astype(np.float32)}
    for _ in range(args.iterations + 1):
        sess.run(None, feed)
    profile = sess.end_profiling()
    nodes = {}
    for event in json.load(open(profile)):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            nodes.setdefault(event["name"][: -len("_kernel_time")], []).append(event["dur"] / 1e3)
    os.remove(profile)
    print(f"{name}: {ort_name()}, 1 thread, median of {args.iterations} runs per node (ms)")
    total = 0.0
    for node, times in nodes.items():
        med = statistics.median(times[1:] or times)
        total += med
        print(f"  {node:<50} {med:8.3f}")
    print(f"  total {total:.2f} ms")


def ort_name():
    """onnxruntime's version, and which kernels it was made to pick."""
    avx2 = " (AVX2 kernels, tools/ort_avx2.py)" if os.environ.get(ORT_AVX2_ENV) else ""
    return f"onnxruntime {ort.__version__}{avx2}"


def reexec_with_avx2_ort(cache):
    """Runs this script again with the AVX2-only copy of onnxruntime first on the import path."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import ort_avx2

    dest = ort_avx2.prepare(os.path.abspath(os.path.join(cache, "ort-avx2")))
    env = dict(os.environ, **{ORT_AVX2_ENV: dest})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (dest, env.get("PYTHONPATH")) if p)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--liveness", default=os.path.join(ROOT, "target/release/liveness"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for both sides (onnxruntime intra-op, LIVENESS_THREADS)")
    ap.add_argument("--pipeline", action="store_true", help="whole processes over the dev photos")
    ap.add_argument("--ort-layers", metavar="NAME", help="onnxruntime's per-node profile of one network")
    ap.add_argument("--ort-avx2", action="store_true",
                    help="onnxruntime with its AVX2 kernels even on an AVX-512 CPU (tools/ort_avx2.py)")
    args = ap.parse_args()
    cache = os.environ.get("BENCH_PEER_DIR", os.path.join(ROOT, "target/bench-peer"))
    if args.ort_avx2:
        patched = os.environ.get(ORT_AVX2_ENV)
        if not patched:
            reexec_with_avx2_ort(cache)
        patched = os.path.realpath(patched)
        if os.path.commonpath([os.path.realpath(ort.__file__), patched]) != patched:
            sys.exit(f"--ort-avx2: imported {ort.__file__}, not the copy in {patched}")
    if args.ort_layers:
        ort_layers(args)
        return
    if args.pipeline:
        bench_pipelines(args)
        return
    convert(cache)
    nets = networks(cache)
    rng = np.random.default_rng(0)
    sessions = [(name, session(path, args.threads), rng.uniform(lo, hi, shape).astype(np.float32))
                for name, path, shape, lo, hi in nets]
    env = dict(os.environ, LIVENESS_THREADS=str(args.threads))
    ours = {name: [] for name, *_ in nets}
    theirs = {name: [] for name, *_ in nets}
    load = [os.getloadavg()]
    for _ in range(args.rounds):
        for name, sess, x in sessions:
            theirs[name].append(time_ort(sess, x, args.iterations))
        for name, value in time_ours(args.liveness, args.iterations, env).items():
            if name in ours:
                ours[name].append(value)
    load.append(os.getloadavg())
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    print(f"CPU: {cpu_name()} ({os.cpu_count()} CPUs; {' '.join(simd)}); {ort_name()}; "
          f"{args.threads} thread(s) each")
    print(f"{args.rounds} rounds x {args.iterations} iterations; loadavg before {load[0][0]:.2f}, "
          f"after {load[1][0]:.2f}")
    print("| network | ours ms (min) | onnxruntime ms (min) | ratio (median) | ratio (min) |")
    print("|---|---|---|---|---|")
    for name, *_ in nets:
        if not ours[name]:
            print(f"| {name} | missing | | | |")
            continue
        o_med = statistics.median(v[0] for v in ours[name])
        o_min = min(v[1] for v in ours[name])
        t_med = statistics.median(v[0] for v in theirs[name])
        t_min = min(v[1] for v in theirs[name])
        print(f"| {name} | {o_med:.2f} ({o_min:.2f}) | {t_med:.2f} ({t_min:.2f}) | "
              f"{o_med / t_med:.2f} | {o_min / t_min:.2f} |")


if __name__ == "__main__":
    main()
