"""bf16 autocast against fp32 on the CPU: is it worth making `precision='auto'` pick bf16 on CPUs that have it?

Two measurements, both precisions side by side in one run, alternating:
- model only: forward and backward of resnet18 and resnet34 on a batch already in memory (64 px like the demo,
  and 224 px like the book), milliseconds per step, median of the steps;
- the demo's training: `fine_tune(1)` (one frozen epoch, one unfrozen) of resnet18 on the synthetic kit from the
  stand-in weights, seconds per epoch and the final validation accuracy.
The demo's bf16 is the learner's own (`pets_learner(precision='bf16')`, which adds `CPUMixedPrecision`: fastai's
`MixedPrecision` autocasts on CUDA only). These figures decided that `precision='auto'` is bf16 on such CPUs.

    python bench/precision.py            # about 5 minutes on 2 cores with native bf16; 2 without
"""
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import load, machine

def cpu_flags() -> str:
    flags = next((l.split(':', 1)[1].split() for l in open('/proc/cpuinfo') if l.startswith('flags')), [])
    return ', '.join(f for f in ('avx512_bf16', 'amx_bf16', 'avx512_vnni') if f in flags) or 'no native bf16'

def model_step_ms(arch, size, bs, bf16, steps=6):
    import torch, torchvision
    model = getattr(torchvision.models, arch)(num_classes=37).train()
    x, y = torch.randn(bs, 3, size, size), torch.randint(0, 37, (bs,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    out = []
    for i in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if i: out.append((time.perf_counter() - t) * 1000)   # the first step warms up
    return statistics.median(out)

def demo_fit(bf16):
    from petbreeds.core import seed_everything
    from petbreeds.data import pets_dataloaders
    from petbreeds.demo import demo_images
    from petbreeds.learner import pets_learner
    seed_everything(42)
    dls = pets_dataloaders(demo_images(), bs=32, size=64, presize=96, device='cpu', progress=False)
    learn = pets_learner(dls, 'resnet18', precision='bf16' if bf16 else 'fp32', path=tempfile.mkdtemp())
    times = []
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.freeze(); learn.fit_one_cycle(1, 3e-3); times.append(time.perf_counter() - start)
        start = time.perf_counter(); learn.unfreeze(); learn.fit_one_cycle(1, slice(3e-3 / 200, 3e-3 / 2)); times.append(time.perf_counter() - start)
    return times, float(learn.validate()[2])

def main():
    warnings.filterwarnings('ignore')
    os.environ.setdefault('PETBREEDS_HOME', tempfile.mkdtemp(prefix='petbreeds-bench-'))
    import torch
    from petbreeds.demo import use_standin_weights
    use_standin_weights('resnet18')
    print(f"machine: {machine()}; {cpu_flags()}")
    print(f"before: {load()}")
    from petbreeds.core import cpu_has_native_bf16
    native = cpu_has_native_bf16()
    print("model only, ms per training step (forward, backward, step), median of 6:")
    for arch, size, bs in (('resnet18', 64, 32), ('resnet34', 224, 16))[:None if native else 1]:
        fp32, bf16 = [], []
        for _ in range(2):
            fp32.append(model_step_ms(arch, size, bs, False)); bf16.append(model_step_ms(arch, size, bs, True))
        print(f"  {arch} at {size}, bs {bs}: fp32 {statistics.median(fp32):.0f}, bf16 {statistics.median(bf16):.0f}, "
              f"bf16 speed-up {statistics.median(fp32) / statistics.median(bf16):.2f}x")
    if not native:
        print("this CPU has no native bf16: torch emulates it, so the rest (minutes per bf16 step at 224) is skipped")
        print(f"after: {load()}")
        return
    print("demo fine_tune(1) of resnet18 at 64 px on the kit (frozen epoch, unfrozen epoch):")
    for name, bf16 in (('fp32', False), ('bf16', True)):
        times, acc = demo_fit(bf16)
        print(f"  {name}: seconds per epoch {times[0]:.1f}, {times[1]:.1f}; validation accuracy {acc:.4f}")
    print(f"after: {load()}")

if __name__ == '__main__': main()
