"""Prediction speed on the CPU: cold start, per-image latency and batch throughput of resnet34 at 224: torch, ONNX Runtime, int8 ONNX.

cold start: a fresh `python` process that imports the predictor, loads the model file and predicts one image
(process start to first prediction), repeated. latency: one image at a time (open, prepare, run), in a warm
process of its own per backend (torch's and ONNX Runtime's thread pools keep spinning after a call, so sharing
a process slows both), p50 and p95 over many calls, and its two parts apart: opening and preparing the
image, and the model alone on a prepared one. throughput: images per second in batches of 32 (prepared
once: the model alone). The int8 model is `petbreeds.export.export_int8`'s, calibrated on half the bench
images; its top-1 agreement with the float model is printed (the head is untrained here, so agreement is a
harder test than on a trained model). All backends in one run, rounds alternating, same images.

    python bench/predict.py --quick
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import load, machine, pets_sized_images

def make_model(folder: Path, images: Path) -> Path:
    "A resnet34 model file at 224 from presize 460 (stand-in body, untrained head: speed doesn't depend on training)"
    from petbreeds.data import pets_dataloaders
    from petbreeds.export import export_onnx
    from petbreeds.learner import save_model
    from petbreeds.learner import pets_learner
    dls = pets_dataloaders(images, bs=8, size=224, presize=460, device='cpu', progress=False)
    model = save_model(pets_learner(dls, 'resnet34', path=folder), folder/'model.safetensors')
    export_onnx(model, folder/'model.onnx')
    return model

def make_int8(model: Path, folder: Path, files: list) -> dict:
    from petbreeds.export import export_int8
    return export_int8(model, folder/'model-int8.onnx', files, min_agreement=0)   # report the agreement, don't refuse

def cold_start(model: Path, image: Path, backend: str) -> float:
    code = (f"from petbreeds.inference import Predictor; "
            f"Predictor.from_file({str(model)!r}, backend={backend!r}).predict([{str(image)!r}])")
    start = time.perf_counter()
    subprocess.run([sys.executable, '-c', code], check=True, capture_output=True)
    return time.perf_counter() - start

LATENCY = """
import json, sys, time
from petbreeds.inference import Predictor
model, backend, n, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
p = Predictor.from_file(model, backend=backend)
for f in files[:5]: p.predict([f])   # warm-up
out, model, prep = [], [], []
for i in range(n):
    t = time.perf_counter(); p.predict([files[i % len(files)]]); out.append((time.perf_counter() - t) * 1000)
x = p.prepare(files[0])[None]
for i in range(n):   # the same call's two parts apart: opening and preparing the image, and the model alone
    t = time.perf_counter(); p.prepare(files[i % len(files)]); prep.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter(); p._run(x); model.append((time.perf_counter() - t) * 1000)
print(json.dumps([out, prep, model]))
"""

THROUGHPUT = """
import json, sys, time
import numpy as np
from petbreeds.inference import Predictor
model, backend, n, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
p = Predictor.from_file(model, backend=backend)
batch = np.stack([p.prepare(f) for f in (files * 32)[:32]])
p._run(batch)   # warm-up
out = []
for i in range(n):
    t = time.perf_counter(); p._run(batch); out.append(32 / (time.perf_counter() - t))
print(json.dumps(out))
"""

def throughputs(model, backend, files, n):
    "Images per second through the model in batches of 32, in a fresh process"
    import json
    res = subprocess.run([sys.executable, '-c', THROUGHPUT, str(model), backend, str(n), *map(str, files)], check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])

def latencies(model, backend, files, n):
    "Milliseconds per single-image predict, then per opening-and-preparing and per model call, in a fresh process for `backend`"
    import json
    res = subprocess.run([sys.executable, '-c', LATENCY, str(model), backend, str(n), *map(str, files)], check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])

def percentile(xs, q):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='fewer repeats')
    p.add_argument('--calls', type=int, default=100, help='single-image calls per backend for the latency')
    p.add_argument('--starts', type=int, default=5, help='cold starts per backend')
    args = p.parse_args()
    if args.quick: args.calls, args.starts = 30, 3
    warnings.filterwarnings('ignore')
    os.environ.setdefault('PETBREEDS_HOME', tempfile.mkdtemp(prefix='petbreeds-bench-'))
    from petbreeds.demo import use_standin_weights
    use_standin_weights('resnet34')
    print(f"machine: {machine()}")
    print(f"before: {load()}")
    images = pets_sized_images(Path(tempfile.gettempdir())/'petbreeds-bench-64', 64)
    folder = Path(tempfile.mkdtemp(prefix='petbreeds-model-'))
    model = make_model(folder, images)
    files = sorted(images.glob('*.jpg'))
    int8 = make_int8(model, folder, files)
    paths = {'torch': (model, 'torch'), 'onnx': (folder/'model.onnx', 'onnx'), 'int8': (folder/'model-int8.onnx', 'onnx')}
    mb = {b: p.stat().st_size / 2**20 for b, (p, _) in paths.items()}
    print(f"model: resnet34, 224 from presize 460; {mb['torch']:.0f} MB safetensors, {mb['onnx']:.0f} MB onnx, {mb['int8']:.0f} MB int8 onnx; "
          f"int8 top-1 agreement with fp32: {int8['agreement']:.1%} of {int8['checked_on']} images")

    starts = {b: [] for b in paths}
    for _ in range(args.starts):
        for b, (m, engine) in paths.items(): starts[b].append(cold_start(m, files[0], engine))
    lat, thr = {b: [] for b in paths}, {b: [] for b in paths}
    prep, alone = {b: [] for b in paths}, {b: [] for b in paths}
    rounds = 3
    for _ in range(rounds):
        for b, (m, engine) in paths.items():
            whole, opening, model_alone = latencies(m, engine, files, args.calls // rounds)
            lat[b] += whole; prep[b] += opening; alone[b] += model_alone
            thr[b] += throughputs(m, engine, files, max(2, args.calls // 30))
    for b in paths:
        s = sorted(starts[b])
        print(f"{b:5s} cold start s: median {statistics.median(s):.2f} (min {s[0]:.2f}, max {s[-1]:.2f}, n={len(s)}); "
              f"latency ms per image: p50 {percentile(lat[b], 50):.1f}, p95 {percentile(lat[b], 95):.1f} (n={len(lat[b])}); "
              f"batch 32: {statistics.median(thr[b]):.1f} images/s (n={len(thr[b])})")
        print(f"{'':5s} of which p50: opening and preparing the image {percentile(prep[b], 50):.1f} ms, the model alone {percentile(alone[b], 50):.1f} ms")
    print(f"after: {load()}")
    print(f"ratio={percentile(lat['torch'], 50) / percentile(lat['onnx'], 50):.2f} (torch / onnx, p50 latency)")
    print(f"int8_ratio={percentile(lat['onnx'], 50) / percentile(lat['int8'], 50):.2f} (fp32 onnx / int8 onnx, p50 latency; "
          f"the model alone {percentile(alone['onnx'], 50) / percentile(alone['int8'], 50):.2f})")

if __name__ == '__main__': main()
