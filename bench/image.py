"""Opening and preparing one image for the predictor: the exact path against the one-pass one (`prepare_image(exact=False)`), side by side.

Pets-sized JPEGs (500x375 and 375x500, `_common.pets_sized_images`), for both specs a model can have: 224 from the decode-once
cache's 448 (`resize_then_crop`, the default) and 224 from the book's `Resize(460)` (`crop_then_resize`). Per image, in ms:
decode (`open_image` with the predictor's draft side), prepare the decoded image exactly, prepare it in one pass, and the
whole of each (open and prepare, as `Predictor.prepare` does). Rounds alternate between the five, in a new random order for
every image; wall time, and the thread's CPU time, which a busy machine's other work inflates less. Also the largest
difference between the two preparations over all images, in 8-bit levels (one level is 1/(255 std) in the model's units).

Then larger photos (made in memory; prepare only): the exact path against the one pass forced past `ONE_PASS_MAX_TAPS`,
with the number of taps each needs, which is where that threshold comes from.

    python bench/image.py --quick
"""
import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import load, machine, pets_sized_images, summary

def timed(fn) -> tuple:
    "(wall ms, CPU ms of this thread) of one call"
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000

def side_by_side(ways: dict, items: list, rounds: int, rng) -> dict:
    "name: ([wall ms], [cpu ms]) of calling each way on each item, the ways in a new random order for every item"
    out = {name: ([], []) for name in ways}
    for _ in range(rounds):
        for item in items:
            for name in rng.permutation(list(ways)):
                wall, cpu = timed(lambda: ways[name](item))
                out[name][0].append(wall); out[name][1].append(cpu)
    return out

def levels(a, b, spec) -> float:
    "The largest difference between two prepared arrays, in 8-bit levels"
    import numpy as np
    return float((np.abs(a - b) * 255 * np.asarray(spec.std, np.float32)[:, None, None]).max())

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help="16 images, 3 rounds; 3 rounds of the larger photos (else 4)")
    p.add_argument('--images', type=int, default=64, help='Pets-sized JPEGs (default: 64)')
    p.add_argument('--rounds', type=int, default=5, help='rounds over the images (default: 5)')
    args = p.parse_args()
    large_rounds = 4
    if args.quick: args.images, args.rounds, large_rounds = 16, 3, 3
    warnings.filterwarnings('ignore')
    import numpy as np
    from PIL import Image
    from petbreeds.input_spec import ONE_PASS_MAX_TAPS, InputSpec, _one_pass_taps, _prepare_one_pass, _square_plan, open_image, prepare_image
    print(f"machine: {machine()}")
    print(f"before: {load()}")
    files = sorted(pets_sized_images(Path(tempfile.gettempdir())/f'petbreeds-bench-{args.images}', args.images).glob('*.jpg'))
    rng = np.random.default_rng(0)
    specs = {'224 from 448 (cache)': InputSpec.for_training(224, 460), '224 from 460 (book)': InputSpec.for_training(224, 460, cached=False)}
    rows, moved = [], 0.0
    for label, spec in specs.items():
        decoded = {f: open_image(f, draft_side=spec.item_side) for f in files}
        moved = max([moved] + [levels(prepare_image(img, spec, exact=False), prepare_image(img, spec), spec) for img in decoded.values()])
        ways = {'decode': lambda f: open_image(f, draft_side=spec.item_side),
                'prepare, exact': lambda f: prepare_image(decoded[f], spec),
                'prepare, one pass': lambda f: prepare_image(decoded[f], spec, exact=False),
                'open + prepare, exact': lambda f: prepare_image(open_image(f, draft_side=spec.item_side), spec),
                'open + prepare, one pass': lambda f: prepare_image(open_image(f, draft_side=spec.item_side), spec, exact=False)}
        for f in files[:4]:
            for way in ways.values(): way(f)   # warm-up: taps cached, code paths touched
        times = side_by_side(ways, files, args.rounds, rng)
        rows += [(label, name, wall, cpu) for name, (wall, cpu) in times.items()]
    print(f"after: {load()}")
    print(f"\nPets-sized JPEGs ({len(files)} images, {args.rounds} rounds, all ways alternating), ms per image:")
    print('| spec | step | wall: median (min, max, n) | CPU of the thread: median |'); print('| --- | --- | --- | --- |')
    for label, name, wall, cpu in rows: print(f"| {label} | {name} | {summary(wall)} | {statistics.median(cpu):.2f} |")
    for label in specs:
        med = {name: (statistics.median(wall), statistics.median(cpu)) for l, name, wall, cpu in rows if l == label}
        for step in ('prepare', 'open + prepare'):
            e, o = med[f'{step}, exact'], med[f'{step}, one pass']
            print(f"{label}, {step}: one pass {e[0] / o[0]:.2f}x as fast by wall time, {e[1] / o[1]:.2f}x by CPU time")
    print(f"largest difference, one pass against exact, over {len(files)} images and both specs: {moved:.3f} of an 8-bit level")

    print(f"\nlarger photos, prepare only (exact=False takes the exact path beyond {ONE_PASS_MAX_TAPS} taps), {large_rounds} rounds alternating:")
    print(f"before: {load()}")
    small = Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8))
    photos = [small.resize(wh, Image.BICUBIC) for wh in ((500, 375), (1000, 750), (1600, 1200), (2000, 1500), (2400, 1800))]
    cases = [(img, spec) for img in photos for spec in (*specs.values(), InputSpec.for_training(64, 96))]
    big = side_by_side({'exact': lambda c: prepare_image(c[0], c[1]), 'one pass': lambda c: _prepare_one_pass(c[0], c[1], max_taps=10**6)}, cases, large_rounds, rng)
    print(f"after: {load()}")
    print('| photo | spec | taps | exact ms (CPU) | one pass ms (CPU) | exact / one pass (CPU) | exact=False takes |'); print('| --- | --- | --- | --- | --- | --- | --- |')
    n = len(cases)
    for i, (img, spec) in enumerate(cases):
        taps = max(_one_pass_taps(*axis, spec.item_side, spec.size)[0].shape[1] for axis in _square_plan(*img.size, spec.item_side, spec.resize))
        e = [big['exact'][k][i::n] for k in (0, 1)]; o = [big['one pass'][k][i::n] for k in (0, 1)]
        print(f"| {img.width}x{img.height} | {spec.size} from {spec.item_side} ({'cache' if spec.cached else 'book'}) | {taps} "
              f"| {statistics.median(e[0]):.1f} ({statistics.median(e[1]):.1f}) | {statistics.median(o[0]):.1f} ({statistics.median(o[1]):.1f}) "
              f"| {statistics.median(e[1]) / statistics.median(o[1]):.2f} | {'one pass' if taps <= ONE_PASS_MAX_TAPS else 'exact'} |")

if __name__ == '__main__': main()
