"""Shared helpers for the benchmarks: machine description, quietness, synthetic Pets-sized images, stats."""
import os
import platform
import resource
import statistics
from pathlib import Path

def machine() -> str:
    import torch
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor())
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'
    return (f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}, "
            f"python {platform.python_version()}")

def load() -> str:
    "The 1-minute load average against the CPU count: how quiet the machine was"
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"

def pets_sized_images(dest: Path, n: int, seed: int = 0) -> Path:
    "n synthetic JPEGs at Pets' typical 500x375 / 375x500, quality 90, with breed names (made once)"
    import numpy as np
    from petbreeds.core import BREEDS
    from petbreeds.demo import breed_traits, draw_pet
    dest = Path(dest)
    if dest.is_dir() and len(list(dest.glob('*.jpg'))) == n: return dest
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        b = BREEDS[i % 37]
        size = (500, 375) if i % 3 else (375, 500)
        draw_pet(*breed_traits(b), rng, size).save(dest/f'{b}_{i + 1}.jpg', quality=90)
    return dest

def peak_rss_mb() -> float:
    "Peak resident memory of this process and of its finished children, in MB"
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024

def summary(xs) -> str:
    xs = list(xs)
    spread = f" (min {min(xs):.1f}, max {max(xs):.1f}, n={len(xs)})" if len(xs) > 1 else ''
    return f"{statistics.median(xs):.1f}{spread}"

def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob('*') if p.is_file()) / 2**20
