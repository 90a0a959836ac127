"""Images per second through the data pipeline: the book's DataBlock against petbreeds' cache and fused augmentation, side by side.

Same files (synthetic JPEGs at Pets' typical 500x375), same sizes (224 from presize 460), same batch size,
in one process, alternating the pipelines round by round so that a noisy neighbour hits them all. The
loaders are iterated as in training (the training set, shuffled, augmented) on the CPU. Then each stage
of each pipeline is timed per batch. Nothing is asserted, everything is printed.

    python bench/data.py --quick      # about a minute on 2 cores
    python bench/data.py --images DIR # your own images (e.g. the real Pets)
"""
import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import load, machine, peak_rss_mb, pets_sized_images, summary

def book_dataloaders(path, bs, size, presize, num_workers):
    "The chapter's DataBlock, exactly as the book writes it"
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, Normalize, RandomSplitter, RegexLabeller, Resize,
                                   aug_transforms, get_image_files, imagenet_stats, using_attr)
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, splitter=RandomSplitter(seed=42),
                      get_y=using_attr(RegexLabeller(r'(.+)_\d+.jpg$'), 'name'), item_tfms=Resize(presize),
                      batch_tfms=[*aug_transforms(size=size, min_scale=0.75), Normalize.from_stats(*imagenet_stats)])
    kw = {} if num_workers is None else {'num_workers': num_workers}
    return block.dataloaders(path, bs=bs, device='cpu', **kw)

def fused_dataloaders(items, cache, bs, size, presize, min_scale):
    "petbreeds' cached DataBlock with its batch transforms (IntToFloatTensor included) swapped for `fused_aug_tfms`"
    from petbreeds.augment import fused_aug_tfms
    from petbreeds.data import pets_block
    block = pets_block(size, presize, min_scale, presize_cache=cache, one_pass=True, get_items=None)
    block.batch_tfms = fused_aug_tfms(size, min_scale)
    return block.dataloaders(items, bs=bs, device='cpu', num_workers=0)

def images_per_second(dl, epochs):
    "Iterate `dl` for `epochs` after one warm-up batch; images per second"
    it = iter(dl); next(it); del it
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for xb, _ in dl: n += len(xb)
    return n / (time.perf_counter() - start)

STAGES = {'IntToFloatTensor': 'IntToFloatTensor: uint8 to float', 'Flip': 'Flip+Warp+Rotate+Zoom: grid, grid_sample',
          'RandomResizedCropGPU': 'RandomResizedCropGPU: the crop, resampled', 'Brightness': 'Brightness+Contrast, in logit space',
          'Normalize': 'Normalize', 'FusedAugment': 'FusedAugment: all of the above'}

def _ms(f, reps=3):
    "Median milliseconds of `reps` calls of `f`, after one untimed call"
    f(); times = []
    for _ in range(reps):
        start = time.perf_counter(); f(); times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)

def stage_ms(dl, batches=3) -> dict:
    "Milliseconds per batch of each stage on the training set, in this process: items and collation, then each batch transform"
    times, rng = {}, random.Random(0)
    for _ in range(batches):
        start = time.perf_counter()
        b = dl.do_batch([dl.do_item(i) for i in rng.sample(range(len(dl.dataset)), dl.bs)])
        times.setdefault('items + collate', []).append(time.perf_counter() - start)
        for tfm in dl.after_batch.fs:
            start = time.perf_counter()
            b = tfm(b, split_idx=0)
            times.setdefault(STAGES.get(type(tfm).__name__, type(tfm).__name__), []).append(time.perf_counter() - start)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}

def fastai_affine_steps(dl) -> dict:
    "fastai's composed affine transform (the default pipeline) split into its grid and its grid_sample, ms per batch"
    from fastai.vision.augment import AffineCoordTfm, affine_grid
    from fastai.vision.augment import _grid_sample  # private: the bench retraces `affine_coord` step by step
    from fastai.data.transforms import IntToFloatTensor
    aff = next((t for t in dl.after_batch.fs if isinstance(t, AffineCoordTfm)), None)
    if aff is None: return {}
    x = IntToFloatTensor()(dl.do_batch([dl.do_item(i) for i in range(dl.bs)])[0])
    def grid():
        aff.before_call(x, split_idx=0)
        coords = affine_grid(aff.mat, x.shape[:2] + aff.cp_size, align_corners=True)
        for warp in aff.coord_fs: coords = warp(coords)
        return coords
    coords = grid()
    return {'draws + affine grid + warp': _ms(grid),
            'grid_sample': _ms(lambda: _grid_sample(x, coords, padding_mode=aff.pad_mode, align_corners=True))}

def fused_steps(dl) -> dict:
    "FusedAugment's steps one by one on a uint8 batch, ms per batch"
    import torch
    import torch.nn.functional as F
    from petbreeds.augment import FusedAugment, augment_draws, augment_mat, homography_grid, light_normalize_
    fused = next(t for t in dl.after_batch.fs if isinstance(t, FusedAugment))
    x = dl.do_batch([dl.do_item(i) for i in range(dl.bs)])[0].as_subclass(torch.Tensor)
    (n, _, h, w), size = x.shape, (fused.size, fused.size) if isinstance(fused.size, int) else tuple(fused.size)
    d = augment_draws(n, 0, fused.min_scale)
    pixels, grid, divide = torch.empty(x.shape), torch.empty(n, *size, 2), torch.empty(n, *size)   # kept between batches, as in FusedAugment
    y = F.grid_sample(pixels.copy_(x), homography_grid(augment_mat(d, n, h, w), size, out=grid), align_corners=True)
    return {'draws': _ms(lambda: augment_draws(n, 0, fused.min_scale)), 'uint8 to float, into a kept buffer': _ms(lambda: pixels.copy_(x)),
            'grid, one matrix per image': _ms(lambda: homography_grid(augment_mat(d, n, h, w), size, out=grid, scratch=divide)),
            'grid_sample': _ms(lambda: F.grid_sample(pixels, grid, padding_mode=fused.pad_mode, align_corners=True)),
            'lighting + normalise, in place': _ms(lambda: light_normalize_(y, d, fused.mean, fused.std, 1 / 255))}

def print_stages(stages:dict):
    "One row per stage, one column per pipeline"
    rows = list(dict.fromkeys(k for s in stages.values() for k in s))
    print(f"{'ms per batch':45s}" + ''.join(f"{name:>12s}" for name in stages))
    for row in rows + ['total']:
        cells = [s.get(row) if row != 'total' else sum(s.values()) for s in stages.values()]
        print(f"{row:45s}" + ''.join(f"{c:12.1f}" if c is not None else f"{'':12s}" for c in cells))

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='256 images, 1 epoch per measurement, 3 rounds')
    p.add_argument('--images', help='a folder of Pets-style images to use instead of synthetic ones')
    p.add_argument('--n', type=int, default=1024, help='synthetic images (default 1024; --quick: 256)')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--epochs', type=int, default=1, help='epochs per measurement')
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--presize', type=int, default=460)
    p.add_argument('--stock-workers', type=int, default=None, help="book loader processes (default: fastai's, one per CPU)")
    args = p.parse_args()
    if args.quick: args.n, args.rounds = 256, 3
    warnings.filterwarnings('ignore')
    os.environ.setdefault('PETBREEDS_HOME', tempfile.mkdtemp(prefix='petbreeds-bench-'))
    from petbreeds.cache import open_cache
    from petbreeds.data import get_pet_images, pets_dataloaders

    print(f"machine: {machine()}")
    print(f"before: {load()}")
    images = Path(args.images) if args.images else pets_sized_images(Path(tempfile.gettempdir())/f'petbreeds-bench-{args.n}', args.n)
    print(f"images: {images} ({len(list(images.glob('*.jpg')))} files), bs {args.bs}, {args.size} from presize {args.presize}")

    start = time.perf_counter()
    cache, items = open_cache(get_pet_images(images), args.size, args.presize, progress=False)
    build = time.perf_counter() - start
    fast = pets_dataloaders(images, bs=args.bs, size=args.size, presize=args.presize, device='cpu', progress=False, items=items)
    print(f"cache: built in {build:.1f} s ({len(cache) / build:.0f} images/s), {cache.nbytes / 2**20:.0f} MB on disk "
          f"for {len(cache)} images at short side {cache.side} (in {cache.folder})")
    book = book_dataloaders(images, args.bs, args.size, args.presize, args.stock_workers)
    cached_book = pets_dataloaders(images, bs=args.bs, size=args.size, presize=args.presize, device='cpu', progress=False,
                                   one_pass=False, items=items)
    fused = fused_dataloaders(items, cache, args.bs, args.size, args.presize, min_scale=0.75)

    book_name, same_name, default_name, fused_name = ('book (decode every epoch, 2 interpolations)', 'petbreeds cache, book augmentations',
                                                      'petbreeds cache + one_pass (default)', 'petbreeds cache + FusedAugment')
    runs = {book_name: (book.train, []), same_name: (cached_book.train, []), default_name: (fast.train, []), fused_name: (fused.train, [])}
    for r in range(args.rounds):
        for name, (dl, out) in runs.items(): out.append(images_per_second(dl, args.epochs))
    for name, (_, out) in runs.items():
        print(f"{name:45s} images/s {summary(out)}")
    print(f"after: {load()}")
    print(f"peak resident memory of this process and its loader workers: {peak_rss_mb():.0f} MB")

    print(f"\nper-stage time, training set, {args.bs} images per batch, in this process (no loader workers), median of 3:")
    print_stages({'book': stage_ms(book.train), 'cache+book': stage_ms(cached_book.train),
                  'default': stage_ms(fast.train), 'fused': stage_ms(fused.train)})
    print("inside the default's Flip+Warp+Rotate+Zoom: " + ', '.join(f"{k} {v:.1f}" for k, v in fastai_affine_steps(fast.train).items()))
    print("inside FusedAugment: " + ', '.join(f"{k} {v:.1f}" for k, v in fused_steps(fused.train).items()))
    print(f"then: {load()}\n")

    base = statistics.median(runs[book_name][1])
    print(f"ratio with the book's augmentations (cache alone): {statistics.median(runs[same_name][1]) / base:.2f}")
    print(f"ratio of the default (cache + one_pass): {statistics.median(runs[default_name][1]) / base:.2f}")
    print(f"ratio={statistics.median(runs[fused_name][1]) / base:.2f}   (petbreeds cache + FusedAugment against the book)")

if __name__ == '__main__': main()
