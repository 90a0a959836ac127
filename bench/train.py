"""Seconds per training epoch: the book's pipeline against petbreeds', side by side; and, on a GPU, how close an epoch
comes to the model's own speed.

CPU (always): one epoch of resnet18 (all layers training) on the same synthetic Pets-sized JPEGs, the book's
DataBlock + vision_learner against pets_dataloaders + pets_learner, alternating, median of the rounds.

GPU (when one is present): resnet34 at 224 in bf16 on a Pets-sized set (7390 images, 5912 training): seconds per
epoch with petbreeds' pipeline, and that as a fraction of model-only throughput (forward and backward on random
tensors already on the GPU, same batch size, precision and memory format).

    python bench/train.py --quick          # a few minutes on 2 CPU cores
    python bench/train.py --gpu-only       # on a GPU machine: just the GPU figures
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import load, machine, peak_rss_mb, pets_sized_images, summary
from data import book_dataloaders

def epoch_seconds(learn, lr=1e-3):
    "Wall time of one fit_one_cycle epoch (training and validation), everything unfrozen"
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging():
        start = time.perf_counter(); learn.fit_one_cycle(1, lr); return time.perf_counter() - start

def cpu_bench(args, images):
    from fastai.vision.all import error_rate, resnet18, vision_learner
    from petbreeds.data import pets_dataloaders
    from petbreeds.learner import pets_learner, precision_of
    book = book_dataloaders(images, args.bs, args.size, args.presize, None)
    book_learn = vision_learner(book, resnet18, metrics=error_rate, path=tempfile.mkdtemp())
    ours = pets_dataloaders(images, bs=args.bs, size=args.size, presize=args.presize, device='cpu', progress=False)
    our_learn = pets_learner(ours, 'resnet18', path=tempfile.mkdtemp())
    times = {'book': [], 'petbreeds': []}
    timer = TrainingTime(); our_learn.add_cb(timer)
    train_ips, model_ips = [], []
    for _ in range(args.rounds):
        times['book'].append(epoch_seconds(book_learn))
        times['petbreeds'].append(epoch_seconds(our_learn))
        train_ips.append(len(ours.train) * args.bs / timer.seconds)
        model_ips.append(model_only_cpu(our_learn, args.bs, args.size))
    n = len(ours.train_ds) + len(ours.valid_ds)
    precisions = {'book': 'fp32', 'petbreeds': precision_of(our_learn)}   # the book's learner has no mixed precision on a CPU
    for k, v in times.items(): print(f"resnet18 @{args.size}, one epoch of {n} images, {k:10s} ({precisions[k]}) seconds {summary(v)}")
    fraction = statistics.median(a / b for a, b in zip(train_ips, model_ips))
    print(f"CPU: petbreeds' training images/s {summary(train_ips)}; model-only images/s {summary(model_ips)}; "
          f"fraction of model-only {fraction:.2f} (same model, batch, size, {precisions['petbreeds']}, one round each, alternating)")
    return statistics.median(times['book']) / statistics.median(times['petbreeds'])

def TrainingTime():
    "A fastai callback that times the training part of each epoch (data, forward, backward, step; not validation)"
    from fastai.callback.core import Callback
    class TrainingTime(Callback):
        seconds = None
        def before_train(self): self.start = time.perf_counter()
        def after_train(self): self.seconds = time.perf_counter() - self.start
    return TrainingTime()

def model_only_cpu(learn, bs, size, steps=8):
    "Training images/s of `learn`'s model on one batch already in memory: forward, backward, an Adam step, in the learner's precision"
    import torch
    from petbreeds.learner import precision_of
    model = learn.model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-5)
    x, y = torch.randn(bs, 3, size, size), torch.randint(0, 37, (bs,))
    bf16 = precision_of(learn) == 'bf16'
    def step():
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16): out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y); opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    step()   # warm-up
    start = time.perf_counter()
    for _ in range(steps): step()
    return steps * bs / (time.perf_counter() - start)

def gpu_bench(args):
    import torch
    from petbreeds.data import pets_dataloaders
    from petbreeds.learner import pets_learner
    images = pets_sized_images(Path(tempfile.gettempdir())/'petbreeds-bench-7390', 7390)
    dls = pets_dataloaders(images, bs=args.gpu_bs, size=224, presize=460, device='cuda', progress=False)
    learn = pets_learner(dls, 'resnet34', precision='bf16', path=tempfile.mkdtemp())
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-3)                 # warm-up: cuDNN autotuning, first allocations
        torch.cuda.synchronize(); start = time.perf_counter()
        learn.fit_one_cycle(1, 1e-3)
        torch.cuda.synchronize(); epoch = time.perf_counter() - start
    n_train = len(dls.train) * args.gpu_bs
    # model only: the same network, precision and memory format on random tensors already on the GPU
    model, opt = learn.model, torch.optim.Adam(learn.model.parameters(), 1e-4)
    x = torch.randn(args.gpu_bs, 3, 224, 224, device='cuda').contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 37, (args.gpu_bs,), device='cuda')
    model.train()
    def step():
        with torch.autocast('cuda', dtype=torch.bfloat16): loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    for _ in range(10): step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(50): step()
    end.record(); torch.cuda.synchronize()
    model_only = 50 * args.gpu_bs / (start.elapsed_time(end) / 1000)
    print(f"GPU: {torch.cuda.get_device_name()}, resnet34 @224 bf16 channels_last, bs {args.gpu_bs}, {len(dls.train_ds)} training + {len(dls.valid_ds)} validation images")
    print(f"GPU: seconds per epoch (training and validation) {epoch:.2f}; training images/s {n_train / epoch:.0f}")
    print(f"GPU: model-only images/s {model_only:.0f}; epoch throughput as a share of it {n_train / epoch / model_only:.2f} "
          f"(validation time included in the epoch)")

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='192 images at size 128, 2 rounds')
    p.add_argument('--n', type=int, default=512)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--presize', type=int, default=460)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--gpu-only', action='store_true')
    p.add_argument('--gpu-bs', type=int, default=128)
    args = p.parse_args()
    if args.quick: args.n, args.size, args.presize, args.rounds = 192, 128, 256, 2
    warnings.filterwarnings('ignore')
    os.environ.setdefault('PETBREEDS_HOME', tempfile.mkdtemp(prefix='petbreeds-bench-'))
    from petbreeds.demo import use_standin_weights
    use_standin_weights('resnet18', 'resnet34')   # offline: stand-ins where torchvision looks for ImageNet weights
    import torch
    print(f"machine: {machine()}")
    print(f"before: {load()}")
    if torch.cuda.is_available(): gpu_bench(args)
    if args.gpu_only: return
    images = pets_sized_images(Path(tempfile.gettempdir())/f'petbreeds-bench-{args.n}', args.n)
    ratio = cpu_bench(args, images)
    print(f"after: {load()}")
    print(f"peak resident memory of the CPU training runs (this process and its loader workers): {peak_rss_mb():.0f} MB")
    print(f"ratio={ratio:.2f}")

if __name__ == '__main__': main()
