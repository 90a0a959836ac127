"""The web app under load on the CPU: start-up, and latency and throughput for N concurrent clients, OpenVINO and ONNX Runtime against torch.

For each backend in turn, a fresh `petbreeds.serve.serve` process on loopback serves resnet34 at 224 (as in
bench/predict.py). start-up: process start to its first answer (importing, loading the model, building and
launching the app). single: one client asking alone, one photo at a time. concurrent: N clients (threads in
this process) asking at once, for a bounded number of requests or seconds: requests per second, p50/p95
latency, errors. A client is gradio's REST two-step, as `curl` does it (upload; call; read the streamed answer),
and latency is all of it. (gradio_client adds about 120 ms a call of its own on the 2-core machine: 176 ms
against 54 ms for the same call, so it would measure itself.) The clients run on the same machine as the
server, as on one box. Nothing asserts a time.

    python bench/serve.py --clients 4
"""
import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import load, machine, pets_sized_images
from predict import make_model, percentile

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def client():
    import httpx
    return httpx.Client(timeout=120)

def classify(http, url, image):
    "Seconds for one `classify` call as the client sees it, and the server's own `seconds` in the answer"
    start = time.perf_counter()
    with open(image, 'rb') as f: path = http.post(f'{url}gradio_api/upload', files={'files': f}).json()[0]
    call = {'data': [{'path': path, 'meta': {'_type': 'gradio.FileData'}}]}
    event = http.post(f'{url}gradio_api/call/classify', json=call).json()['event_id']
    lines = http.get(f'{url}gradio_api/call/classify/{event}').text.splitlines()
    answer = json.loads(lines[lines.index('event: complete') + 1].removeprefix('data: '))[0]   # ValueError if it failed
    return time.perf_counter() - start, answer['seconds']

def start_server(model, backend, log, image):
    "A serving process for `model` and its URL, and the seconds from its start to its first answer"
    port = free_port()
    url = f'http://127.0.0.1:{port}/'
    code = f"from petbreeds.serve import serve; serve({str(model)!r}, port={port}, backend={backend!r})"
    env = {**os.environ, 'GRADIO_ANALYTICS_ENABLED': 'False'}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = start + 300
    while time.perf_counter() < deadline:
        if proc.poll() is not None: raise SystemExit(f"the {backend} server exited with {proc.returncode}; see {log.name}")
        try:
            with client() as http: classify(http, url, image)
            return proc, url, time.perf_counter() - start
        except Exception: time.sleep(0.2)
    proc.kill(); raise SystemExit(f"the {backend} server gave no answer within 300 s; see {log.name}")

def single(url, files, n):
    with client() as http:
        for f in files[:3]: classify(http, url, f)   # warm-up
        return [classify(http, url, files[i % len(files)])[0] for i in range(n)]

def concurrent_clients(url, files, clients, requests, seconds):
    "Latencies and errors of `clients` threads asking `requests` times each (or until `seconds` pass), and the wall time"
    deadline = time.perf_counter() + seconds
    def one_client(k):
        lat, errors = [], 0
        with client() as http:
            for i in range(requests):
                if time.perf_counter() > deadline: break
                try: lat.append(classify(http, url, files[(k * requests + i) % len(files)]))
                except Exception: errors += 1
        return lat, errors
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool: results = list(pool.map(one_client, range(clients)))
    wall = time.perf_counter() - start
    return [x for lat, _ in results for x in lat], sum(e for _, e in results), wall   # latencies are (client, server) pairs

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--clients', type=int, default=4, help='concurrent clients (default: 4)')
    p.add_argument('--requests', type=int, default=25, help='requests per concurrent client (default: 25)')
    p.add_argument('--single', type=int, default=30, help='requests from the lone client (default: 30)')
    p.add_argument('--seconds', type=float, default=90, help='most seconds for the concurrent phase, per backend (default: 90)')
    args = p.parse_args()
    warnings.filterwarnings('ignore')
    os.environ.setdefault('PETBREEDS_HOME', tempfile.mkdtemp(prefix='petbreeds-bench-'))
    from petbreeds.serve import serving_plan
    from petbreeds.testing import use_standin_weights
    use_standin_weights('resnet34')
    print(f"machine: {machine()}")
    print(f"before: {load()}")
    plan = serving_plan()
    print(f"serving plan: {plan['workers']} predictions at once x {plan['threads']} thread(s) each on {plan['cores']} cores; "
          f"{args.clients} clients x {args.requests} requests, {args.single} alone")
    images = pets_sized_images(Path(tempfile.gettempdir())/'petbreeds-bench-64', 64)
    files = sorted(images.glob('*.jpg'))
    folder = Path(tempfile.mkdtemp(prefix='petbreeds-model-'))
    model = make_model(folder, images)
    rows = {}
    import importlib.util
    engines = ((('openvino', folder/'model.onnx'),) if importlib.util.find_spec('openvino') else ()) + (('onnx', folder/'model.onnx'), ('torch', model))
    for backend, path in engines:
        with open(folder/f'{backend}.log', 'w') as log:
            proc, url, started = start_server(path, backend, log, files[0])
            try:
                alone = single(url, files, args.single)
                lat, errors, wall = concurrent_clients(url, files, args.clients, args.requests, args.seconds)
            finally:
                proc.terminate()
                try: proc.wait(timeout=30)
                except subprocess.TimeoutExpired: proc.kill()
        seen, spent = [c for c, _ in lat], [s for _, s in lat]
        rows[backend] = dict(start=started, p50_1=percentile(alone, 50) * 1000, p95_1=percentile(alone, 95) * 1000, n_1=len(alone),
                             rps=len(lat) / wall, p50_n=percentile(seen, 50) * 1000 if lat else float('nan'),
                             p95_n=percentile(seen, 95) * 1000 if lat else float('nan'), n_n=len(lat), errors=errors,
                             predict_n=percentile(spent, 50) * 1000 if lat else float('nan'))
    print(f"{'':8s} {'start-up s':>10s} {'1 client p50/p95 ms':>20s} {f'{args.clients} clients req/s':>17s} {'p50/p95 ms':>13s} "
          f"{'p95 vs 1-client p50':>20s} {'errors':>6s}  {'predicting, p50 ms':>18s}")
    for b, r in rows.items():
        print(f"{b:8s} {r['start']:10.1f} {r['p50_1']:9.0f} / {r['p95_1']:<8.0f} {r['rps']:17.1f} {r['p50_n']:6.0f} / {r['p95_n']:<4.0f} "
              f"{r['p95_n'] / r['p50_1']:19.1f}x {r['errors']:6d}  {r['predict_n']:18.0f}   (n={r['n_1']} alone, {r['n_n']} together)")
    print("latency: what a client sees (upload, queue, prediction, streamed answer); predicting: the server's own `seconds` under load")
    print(f"after: {load()}")
    if any(r['errors'] for r in rows.values()): raise SystemExit("some requests failed: see the server logs in " + str(folder))

if __name__ == '__main__': main()
