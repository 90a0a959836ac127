"""Re-run notebooks top to bottom and store their outputs, as a reader should find them.

    python .ci/run_notebooks.py nbs/02_learner.ipynb [more.ipynb ...] [--run slow]

Cells tagged `cuda` or `slow` are skipped unless named with --run, and `#| eval: false` ones always (a skipped cell keeps no output). After
running, what a reader would only trip over is removed: fastprogress bars and the empty HTML they leave
behind, and big figures are stored compactly (photo-like ones as JPEG, line art as a 128-colour PNG, none wider
than 1000 pixels), keeping the dpi the figure was drawn at.
Then `nbdev_clean` tidies the metadata. nbdev_test checks the code; this stores what the code shows.
"""
import argparse, base64, io, re, subprocess, sys, time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

BIG_PNG = 60_000   # bytes (base64) above which a PNG is tried as JPEG

def _tagged(src:str, flags) -> bool:
    "Whether the cell is tagged with one of `flags`, or says `#| eval: false` (nbdev_test skips both)"
    return any(re.match(rf'\s*#\|\s*{f}\b', src) for f in flags) or bool(re.search(r'^#\|\s*eval:\s*false', src, re.M))

def _progress(o) -> bool:
    "A fastprogress bar, or the empty display it leaves when done"
    html = o.get('data', {}).get('text/html')
    if html is None: return False
    html = ''.join(html) if isinstance(html, list) else html
    return '<progress' in html or not re.sub(r'<style>.*?</style>|<[^>]+>|\s', '', html, flags=re.S)

MAX_WIDTH = 1000   # pixels: wider stored figures are scaled down (a notebook column is narrower still)

def _smaller_image(o):
    "Store a big figure compactly: photo-like ones as JPEG, line art as a PNG of 128 colours, none wider than MAX_WIDTH"
    from PIL import Image
    data = o.get('data', {})
    stored = data.get('image/png', data.get('image/jpeg'))
    if stored is None or len(stored) <= BIG_PNG: return
    img = Image.open(io.BytesIO(base64.b64decode(stored)))
    dpi = img.info.get('dpi')   # matplotlib's PNG says the dpi it drew at (its pHYs chunk); kept, so tests/test_notebooks.py can check it
    img = img.convert('RGB')
    if img.width > MAX_WIDTH:
        if dpi: dpi = tuple(d * MAX_WIDTH / img.width for d in dpi)   # the same figure in fewer pixels
        img = img.resize((MAX_WIDTH, round(img.height * MAX_WIDTH / img.width)), Image.LANCZOS)
    def encoded(im, fmt, **kw):
        if dpi: kw['dpi'] = tuple(round(d) for d in dpi)
        buf = io.BytesIO(); im.save(buf, fmt, optimize=True, **kw); return base64.b64encode(buf.getvalue()).decode()
    jpeg = encoded(img, 'JPEG', quality=75)
    line_art = encoded(img.quantize(128, method=Image.Quantize.MEDIANCUT), 'PNG')
    data.pop('image/png', None); data.pop('image/jpeg', None)
    if len(line_art) <= len(jpeg) * 1.2: data['image/png'] = line_art   # crisp edges are worth a little more
    else: data['image/jpeg'] = jpeg
    o.get('metadata', {}).pop('image/png', None)

def tidy(nb):
    "Drop progress bars from `nb`'s stored outputs, and store big photo-like PNGs as JPEG"
    for c in nb.cells:
        if c.cell_type != 'code': continue
        c.outputs = [o for o in c.outputs if not _progress(o)]
        for o in c.outputs: _smaller_image(o)

def run(path:Path, run_flags:set, timeout:int):
    nb = nbformat.read(path, as_version=4)
    skipped = {}
    for i, c in enumerate(nb.cells):
        if c.cell_type == 'code' and _tagged(c.source, {'cuda', 'slow'} - run_flags):
            skipped[i] = c.source; c.source = ''
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}}).execute()
    for i, src in skipped.items(): nb.cells[i].source, nb.cells[i].outputs, nb.cells[i].execution_count = src, [], None
    tidy(nb)
    nbformat.write(nb, path)
    return time.perf_counter() - start

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('notebooks', nargs='+', type=Path)
    ap.add_argument('--run', nargs='*', default=[], help='tags to run anyway: slow, cuda')
    ap.add_argument('--timeout', type=int, default=1800, help='seconds per cell')
    ap.add_argument('--tidy-only', action='store_true', help="don't run: only tidy the outputs already stored")
    a = ap.parse_args()
    for nb in a.notebooks:
        if a.tidy_only:
            book = nbformat.read(nb, as_version=4); tidy(book); nbformat.write(book, nb)
        else: print(f"{nb}: {run(nb, set(a.run), a.timeout):.0f} s", flush=True)
    for nb in a.notebooks: subprocess.run(['nbdev_clean', '--fname', str(nb)], check=True)
