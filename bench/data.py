"""Images per second through the data pipeline: the book's DataBlock against petbreeds' cache, side by side.

Same files (synthetic JPEGs at Pets' typical 500x375), same sizes (224 from presize 460), same batch size,
in one process, alternating A and B so that a noisy neighbour hits both. The loaders are iterated as in
training (the training set, shuffled, augmented) on the CPU; nothing is asserted, everything is printed.

    python bench/data.py --quick      # about a minute on 2 cores
    python bench/data.py --images DIR # your own images (e.g. the real Pets)
"""
import argparse
import os
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

def images_per_second(dl, epochs):
    "Iterate `dl` for `epochs` after one warm-up batch; images per second"
    it = iter(dl); next(it); del it
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for xb, _ in dl: n += len(xb)
    return n / (time.perf_counter() - start)

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='256 images, 1 epoch per measurement, 2 rounds')
    p.add_argument('--images', help='a folder of Pets-style images to use instead of synthetic ones')
    p.add_argument('--n', type=int, default=1024, help='synthetic images (default 1024; --quick: 256)')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--epochs', type=int, default=1, help='epochs per measurement')
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--presize', type=int, default=460)
    p.add_argument('--stock-workers', type=int, default=None, help="book loader processes (default: fastai's, one per CPU)")
    args = p.parse_args()
    if args.quick: args.n, args.rounds = 256, 2
    warnings.filterwarnings('ignore')
    os.environ.setdefault('PETBREEDS_HOME', tempfile.mkdtemp(prefix='petbreeds-bench-'))
    from petbreeds.data import pets_dataloaders

    print(f"machine: {machine()}")
    print(f"before: {load()}")
    images = Path(args.images) if args.images else pets_sized_images(Path(tempfile.gettempdir())/f'petbreeds-bench-{args.n}', args.n)
    print(f"images: {images} ({len(list(images.glob('*.jpg')))} files), bs {args.bs}, {args.size} from presize {args.presize}")

    start = time.perf_counter()
    fast = pets_dataloaders(images, bs=args.bs, size=args.size, presize=args.presize, device='cpu', progress=False)
    build = time.perf_counter() - start
    cache = fast.cache
    print(f"cache: built in {build:.1f} s ({len(cache) / build:.0f} images/s), {cache.nbytes / 2**20:.0f} MB on disk "
          f"for {len(cache)} images at short side {cache.side} (in {cache.folder})")
    book = book_dataloaders(images, args.bs, args.size, args.presize, args.stock_workers)
    cached_book = pets_dataloaders(images, bs=args.bs, size=args.size, presize=args.presize, device='cpu', progress=False, one_pass=False)

    runs = {'book (decode every epoch, 2 interpolations)': (book.train, []),
            'petbreeds cache, book augmentations': (cached_book.train, []),
            'petbreeds cache + one_pass (default)': (fast.train, [])}
    for r in range(args.rounds):
        for name, (dl, out) in runs.items(): out.append(images_per_second(dl, args.epochs))
    base = runs['book (decode every epoch, 2 interpolations)'][1]
    for name, (_, out) in runs.items():
        print(f"{name:45s} images/s {summary(out)}")
    print(f"after: {load()}")
    print(f"peak resident memory of this process and its loader workers: {peak_rss_mb():.0f} MB")
    import statistics
    ratio = statistics.median(runs['petbreeds cache + one_pass (default)'][1]) / statistics.median(base)
    ratio_same = statistics.median(runs['petbreeds cache, book augmentations'][1]) / statistics.median(base)
    print(f"ratio with the book's augmentations (cache alone): {ratio_same:.2f}")
    print(f"ratio={ratio:.2f}")

if __name__ == '__main__': main()
