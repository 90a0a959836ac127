"""Prediction speed on the CPU, every engine side by side: resnet34 at 224 in torch fp32/bf16, ONNX Runtime fp32/int8, OpenVINO bf16/int8.

cold start: a fresh `python` process that imports the predictor, loads the model file and predicts one image
(process start to first prediction), repeated; OpenVINO's first start compiles the model into its cache, the
later ones read it back (the median is of all starts, the max is the first). latency: one image at a time (open,
prepare, run), in a warm process of its own per engine (thread pools keep spinning after a call, so sharing a
process slows the others), p50 and p95 over many calls, and its two parts apart: opening and preparing the
image, and the model alone on a prepared one. throughput: images per second in batches of 32 (prepared once:
the model alone), in the same warm process after the latency; and `predict` on the 64 files, each opened, prepared
and run in batches of 32, with the images prepared one at a time (`workers=1`) and in threads ahead of the model
(the default), alternating. agreement: top-1 against torch fp32 on the 64 bench images, and the largest probability
difference. The int8 model is `petbreeds.export.export_int8`'s, calibrated on half the bench images (the head is
untrained here, so agreement is a harder test than on a trained model). bf16 engines run only where the CPU has
native bf16 (elsewhere OpenVINO runs fp32). All engines in one run, rounds alternating, same images.

    python bench/predict.py --quick
"""
import argparse
import json
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
    from petbreeds.learner import pets_learner, save_model
    dls = pets_dataloaders(images, bs=8, size=224, presize=460, device='cpu', progress=False)
    model = save_model(pets_learner(dls, 'resnet34', path=folder), folder/'model.safetensors')
    export_onnx(model, folder/'model.onnx')
    return model

def make_int8(model: Path, folder: Path, files: list) -> dict:
    from petbreeds.export import export_int8
    return export_int8(model, folder/'model-int8.onnx', files, min_agreement=0)   # report the agreement, don't refuse

def cpu_flags() -> str:
    "The CPU's bf16, AMX and VNNI flags, and OpenVINO's view of its CPU"
    flags = next((l.split(':', 1)[1].split() for l in open('/proc/cpuinfo') if l.startswith('flags')), [])
    mine = [f for f in flags if any(k in f for k in ('bf16', 'amx', 'vnni'))]
    try:
        import openvino as ov
        caps = f"; OpenVINO {ov.__version__} CPU capabilities: {', '.join(ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))}"
    except ImportError: caps = '; OpenVINO not installed'
    return f"CPU flags: {' '.join(mine) or 'no bf16, AMX or VNNI'}{caps}"

def cold_start(model: Path, image: Path, backend: str, precision: str) -> float:
    code = (f"from petbreeds.inference import Predictor; "
            f"Predictor.from_file({str(model)!r}, backend={backend!r}, precision={precision!r}).predict([{str(image)!r}])")
    start = time.perf_counter()
    subprocess.run([sys.executable, '-c', code], check=True, capture_output=True)
    return time.perf_counter() - start

LATENCY = """
import json, sys, time
import numpy as np
from petbreeds.inference import Predictor
model, backend, precision, n, files = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
p = Predictor.from_file(model, backend=backend, precision=precision)
for f in files[:5]: p.predict([f])   # warm-up
out, model, prep = [], [], []
for i in range(n):
    t = time.perf_counter(); p.predict([files[i % len(files)]]); out.append((time.perf_counter() - t) * 1000)
x = p.prepare(files[0])[None]
for i in range(n):   # the same call's two parts apart: opening and preparing the image, and the model alone
    t = time.perf_counter(); p.prepare(files[i % len(files)]); prep.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter(); p._run(x); model.append((time.perf_counter() - t) * 1000)
batch = np.stack([p.prepare(f) for f in (files * 32)[:32]])
p._run(batch)   # warm-up at batch 32
thr = []
for i in range(max(2, n // 10)):
    t = time.perf_counter(); p._run(batch); thr.append(32 / (time.perf_counter() - t))
folder = {1: [], None: []}   # predict() on all the files, opened and prepared one at a time, or in threads ahead of the model
for i in range(2):
    for workers in (1, None) if i % 2 == 0 else (None, 1):
        t = time.perf_counter(); p.predict(files, workers=workers); folder[workers].append(len(files) / (time.perf_counter() - t))
print(json.dumps([out, prep, model, thr, folder[1], folder[None]]))
"""

AGREEMENT = """
import json, sys
import numpy as np
from petbreeds.inference import Predictor
ref, model, backend, precision, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
want = Predictor.from_file(ref, backend='torch', precision='fp32')
x = np.stack([want.prepare(f) for f in files])
a, b = want.probabilities(x), Predictor.from_file(model, backend=backend, precision=precision).probabilities(x)
print(json.dumps([float((a.argmax(1) == b.argmax(1)).mean()), float(np.abs(a - b).max())]))
"""

def _child(code, *args):
    res = subprocess.run([sys.executable, '-c', code, *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])

def percentile(xs, q):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]

def engines(folder: Path, model: Path) -> dict:
    "name: (model file, backend, precision), for the engines installed here"
    import importlib.util
    from petbreeds.core import cpu_has_native_bf16
    from petbreeds.inference import openvino_precision
    out = {'torch fp32': (model, 'torch', 'fp32')}
    if cpu_has_native_bf16(): out['torch bf16'] = (model, 'torch', 'bf16')
    out.update({'ORT fp32': (folder/'model.onnx', 'onnx', 'fp32'), 'ORT int8': (folder/'model-int8.onnx', 'onnx', 'fp32')})
    if importlib.util.find_spec('openvino'):
        ov = openvino_precision()
        out.update({f'OV {ov}': (folder/'model.onnx', 'openvino', ov), 'OV int8': (folder/'model-int8.onnx', 'openvino', ov)})
    return out

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='fewer repeats')
    p.add_argument('--calls', type=int, default=100, help='single-image calls per engine for the latency')
    p.add_argument('--starts', type=int, default=5, help='cold starts per engine')
    p.add_argument('--rounds', type=int, default=3, help='rounds of a warm process per engine, alternating (default: 3)')
    p.add_argument('--model-dir', metavar='DIR', help="reuse the model files of an earlier run (its folder, printed as 'models in'), instead of making them")
    args = p.parse_args()
    if args.quick: args.calls, args.starts = 30, 3   # --calls and --starts given with it are overridden
    warnings.filterwarnings('ignore')
    os.environ.setdefault('PETBREEDS_HOME', tempfile.mkdtemp(prefix='petbreeds-bench-'))   # OpenVINO's compiled-model cache goes here too
    from petbreeds.demo import use_standin_weights
    use_standin_weights('resnet34')
    print(f"machine: {machine()}")
    print(cpu_flags())
    print(f"before: {load()}")
    images = pets_sized_images(Path(tempfile.gettempdir())/'petbreeds-bench-64', 64)
    files = sorted(images.glob('*.jpg'))
    if args.model_dir: folder = Path(args.model_dir); model = folder/'model.safetensors'; int8 = None
    else:
        folder = Path(tempfile.mkdtemp(prefix='petbreeds-model-'))
        model = make_model(folder, images)
        int8 = make_int8(model, folder, files)
    print(f"models in {folder}")
    paths = engines(folder, model)
    print(f"model: resnet34, 224 from presize 460; {model.stat().st_size / 2**20:.0f} MB safetensors, {(folder/'model.onnx').stat().st_size / 2**20:.0f} MB onnx, "
          f"{(folder/'model-int8.onnx').stat().st_size / 2**20:.0f} MB int8 onnx" + (f" (ORT's top-1 agreement with fp32 at export: {int8['agreement']:.1%} of {int8['checked_on']} images)" if int8 else ''))

    agree = {b: _child(AGREEMENT, model, m, engine, prec, *files) for b, (m, engine, prec) in paths.items()}
    starts = {b: [] for b in paths}
    for _ in range(args.starts):
        for b, (m, engine, prec) in paths.items(): starts[b].append(cold_start(m, files[0], engine, prec))
    lat, thr, prep, alone, serial, ahead = ({b: [] for b in paths} for _ in range(6))
    rounds = args.rounds
    for _ in range(rounds):
        for b, (m, engine, prec) in paths.items():
            whole, opening, model_alone, batches, one_by_one, threads = _child(LATENCY, m, engine, prec, args.calls // rounds, *files)
            lat[b] += whole; prep[b] += opening; alone[b] += model_alone; thr[b] += batches; serial[b] += one_by_one; ahead[b] += threads
    print(f"after: {load()}")
    head = ('engine', 'cold start s', 'call p50 ms', 'call p95 ms', 'image p50 ms', 'model p50 ms', 'model p95 ms', 'batch 32 img/s', '64 files img/s', 'prepared ahead', 'top-1 vs fp32', 'max |dp|')
    print('| ' + ' | '.join(head) + ' |'); print('|' + ' --- |' * len(head))
    for b in paths:
        row = (b, f"{statistics.median(starts[b]):.2f} (max {max(starts[b]):.2f})", f"{percentile(lat[b], 50):.1f}", f"{percentile(lat[b], 95):.1f}",
               f"{percentile(prep[b], 50):.1f}", f"{percentile(alone[b], 50):.1f}", f"{percentile(alone[b], 95):.1f}", f"{statistics.median(thr[b]):.1f}",
               f"{statistics.median(serial[b]):.1f}", f"{statistics.median(ahead[b]):.1f}", f"{agree[b][0]:.1%}", f"{agree[b][1]:.4f}")
        print('| ' + ' | '.join(row) + ' |')
    print(f"(n: {args.starts} cold starts, {len(lat['torch fp32'])} calls, {len(thr['torch fp32'])} batches per engine; agreement on {len(files)} images)")
    fastest = min(paths, key=lambda b: percentile(lat[b], 50))
    print(f"fastest call: {fastest}, p50 {percentile(lat[fastest], 50):.1f} ms against ORT fp32's {percentile(lat['ORT fp32'], 50):.1f} ms "
          f"(ratio={percentile(lat['ORT fp32'], 50) / percentile(lat[fastest], 50):.2f})")

if __name__ == '__main__': main()
