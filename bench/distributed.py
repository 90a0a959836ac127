"""Training images per second with 1 process and with N, side by side, through `petbreeds.distributed`.

Each process trains the same learner (all layers unfrozen) on synthetic pets with `--bs` images per step,
so the global batch grows with N (weak scaling). The figure is training images per second of all
processes together, over the timed epochs (the first is a warm-up; validation is not timed), and the
scaling efficiency is images/s with N processes divided by N x images/s with one.

On a CPU the processes share its cores: one process with all the threads against two with half each.
That measures what data parallelism costs (start-up aside: the gradient all-reduce every step, the padded
items, smaller per-process work), not a speed-up; an efficiency near 0.5 with 2 processes is the
expected best. `--threads 1` gives each process one core of its own instead, the CPU's version of one GPU
per process. On a machine with N GPUs, one process per GPU, the script measures the speed-up.
A busy machine (see the load average printed) slows a process with several threads far more than one
with a single thread: compare runs taken at a similar load.

    python bench/distributed.py                     # 1 and 2 processes on the CPU: about two minutes on 2 cores
    python bench/distributed.py --threads 1         # one core per process
    python bench/distributed.py --nprocs 1 2 4 8 --arch resnet34 --size 224 --presize 460 \\
        --image-side 400 --per-class 160 --bs 64   # on 8 GPUs: Pets-sized, resnet34 at 224, bf16
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import load, machine

def worker(args):
    "One process of a run (started by torchrun): train, time the training part of each epoch, process 0 writes the figures"
    import torch
    from fastai.callback.core import Callback
    from petbreeds.core import get_device, get_precision, seed_everything
    from petbreeds.data import pets_dataloaders
    from petbreeds.distributed import data_parallel, init_distributed, main_process_first
    from petbreeds.learner import pets_learner
    device = get_device(args.device)
    me = init_distributed(device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    seed_everything(0)
    with main_process_first():
        dls = pets_dataloaders(args.images, bs=args.bs, size=args.size, presize=args.presize, device=device, progress=False)
    precision = get_precision('auto', device)   # bf16 or fp16 on a GPU, fp32 on the CPU
    learn = pets_learner(dls, args.arch, weights='none', precision=precision)
    learn.unfreeze()

    class Clock(Callback):
        "Seconds and images of each epoch's training part, this process"
        def before_fit(self): self.epochs = []
        def before_train(self): sync(); self.images, self.start = 0, time.perf_counter()
        def after_batch(self): self.images += len(self.yb[0]) if self.training else 0
        def after_train(self): sync(); self.epochs.append((self.images, time.perf_counter() - self.start))

    clock = Clock()
    with data_parallel(learn), learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(args.epochs, 1e-3, cbs=clock)
    if me.is_main:   # every process trains the same number of images per epoch, in step with the others
        rates = [n * me.world_size / s for n, s in clock.epochs[1:]]
        Path(args.worker).write_text(json.dumps({'nproc': me.world_size, 'rates': rates, 'threads': torch.get_num_threads(),
                                                 'device': str(device), 'precision': precision,
                                                 'train_images': len(dls.train_ds), 'per_epoch': clock.epochs[1][0] * me.world_size}))

def run(args, nproc:int, images:Path, home:Path) -> dict:
    "Train with `nproc` processes under torchrun on this machine; the figures process 0 wrote"
    out = Path(tempfile.mkdtemp(prefix='petbreeds-bench-ddp-'))/'figures.json'
    env = {**os.environ, 'PETBREEDS_HOME': str(home)}
    if args.device == 'cpu' or not _cuda(): env['OMP_NUM_THREADS'] = str(args.threads or max(1, (os.cpu_count() or 1) // nproc))   # share the cores
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--local-addr', '127.0.0.1', '--nproc-per-node', str(nproc),
           __file__, '--worker', str(out), '--images', str(images), '--device', args.device, '--arch', args.arch,
           '--size', str(args.size), '--presize', str(args.presize), '--bs', str(args.bs), '--epochs', str(args.epochs)]
    started = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0: sys.exit(f"{nproc} process(es) failed:\n{res.stderr[-3000:]}")
    return {**json.loads(out.read_text()), 'wall': time.perf_counter() - started}

def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--nprocs', type=int, nargs='+', default=[1, 2], help='process counts to compare (default: 1 2)')
    p.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda' (default: auto)")
    p.add_argument('--arch', default='resnet18', help='default: resnet18')
    p.add_argument('--size', type=int, default=64, help='pixels the model sees (default: 64)')
    p.add_argument('--presize', type=int, default=96, help='default: 96')
    p.add_argument('--bs', type=int, default=32, help='images per process per step (default: 32)')
    p.add_argument('--epochs', type=int, default=3, help='the first is a warm-up (default: 3)')
    p.add_argument('--threads', type=int, default=None, help='CPU: torch threads per process (default: the cores shared out)')
    p.add_argument('--per-class', type=int, default=8, help='synthetic images per breed (default: 8, so 296 in all)')
    p.add_argument('--image-side', type=int, default=96, help='typical side of the synthetic images (default: 96)')
    p.add_argument('--images', help=argparse.SUPPRESS)
    p.add_argument('--worker', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker: return worker(args)
    if args.epochs < 2: p.error('--epochs must be 2 or more: the first is a warm-up')
    if _cuda() and args.device != 'cpu' and max(args.nprocs) > _gpus(): p.error(f"this machine has {_gpus()} GPU(s): --nprocs up to that")

    from petbreeds.testing import synthetic_pets
    work = Path(tempfile.gettempdir())/f'petbreeds-bench-ddp-{args.per_class}x{args.image_side}'
    images = work/'images'
    if not images.is_dir(): synthetic_pets(images, per_class=args.per_class, size=args.image_side)
    print(f"machine: {machine()}")
    print(f"before: {load()}")
    results = [run(args, n, images, work/'home') for n in args.nprocs]
    print(f"after: {load()}")
    r0 = results[0]
    print(f"{args.arch} @{args.size} from presize {args.presize}, {r0['precision']}, {r0['train_images']} training images of "
          f"{len(list(images.iterdir()))}; images/s of training over {args.epochs - 1} epochs after a warm-up one; "
          f"command: python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    print(f"{'processes':>9} {'device':>7} {'threads':>7} {'bs/process':>10} {'global bs':>9} {'images/epoch':>12} "
          f"{'images/s':>9} {'(min-max)':>13} {'efficiency':>10} {'wall s':>7}")
    one = next((r for r in results if r['nproc'] == 1), None)
    for r in results:
        rate = statistics.median(r['rates'])
        eff = f"{rate / (r['nproc'] * statistics.median(one['rates'])):.2f}" if one else '-'
        print(f"{r['nproc']:>9} {r['device']:>7} {r['threads']:>7} {args.bs:>10} {args.bs * r['nproc']:>9} {r['per_epoch']:>12} "
              f"{rate:>9.1f} {min(r['rates']):>6.1f}-{max(r['rates']):<6.1f} {eff:>10} {r['wall']:>7.1f}")
    if r0['device'] == 'cpu' and one:
        ratios = ', '.join(f"{statistics.median(r['rates']) / statistics.median(one['rates']):.2f} with {r['nproc']}" for r in results if r['nproc'] > 1)
        if len({r['nproc'] * r['threads'] for r in results}) == 1:
            print(f"the CPU: every run used the same {one['threads']} thread(s) in all, so this measures what data parallelism costs, "
                  f"not a speed-up; images/s against one process: {ratios} (1.00 would mean it costs nothing)")
        else:
            print(f"the CPU: each process had its own {', '.join(str(r['threads']) for r in results)} thread(s), like one GPU per process; "
                  f"images/s against one process: {ratios}")

def _gpus() -> int:
    import torch
    return torch.cuda.device_count()

if __name__ == '__main__': main()
