"""The notebooks as a reader gets them: stored outputs small, clean and never duplicated, and no import left unused;
and the chapter notebook's real-data switch: with PETBREEDS_REAL=1 and no network it stops at once with the
clear offline message (the default, synthetic mode is what nbdev_test runs)."""
import ast
import base64
import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

NBS = Path(__file__).parents[1]/'nbs'
NOTEBOOKS = sorted(NBS.glob('*.ipynb'))
OUTPUT_LIMIT = 1_500_000    # bytes of stored outputs, all notebooks together (issue 16: from 3.3 MB)
FIGURE_LIMIT = 150_000      # bytes of one stored picture, base64 as stored (.ci/run_notebooks.py stores big photo-like PNGs as JPEG)
NOISE = {   # what a stored output must not show, and why
    'FutureWarning': "a library's deprecation warning: silence it where it starts (petbreeds.core.quiet_library_warnings, which the notebook's first cell calls)",
    '.venv/': "a path into someone's virtualenv",
    'site-packages/': "a path into the installed libraries",
    'np.int64(': "a numpy scalar's repr: convert it to int",
    'np.float64(': "a numpy scalar's repr: convert it to float",
    'Traceback (most recent call last)': "an error stored as output",
}

NOISE_PATTERNS = {   # the same, as regular expressions
    r'<(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*(?: object)?(?: at 0x[0-9a-f]+)?>': "a bare repr (`<fastai.learner.Learner>`, `<... object at 0x...>`): end the cell with what a reader learns from, or with `;`",
    r"\[\d+(?:, -?[\d.]+(?:e-?\d+)?)+, '\d+:\d\d'\]": "a recorder's values without their names (`[0, 3.967, '00:01']`): show them in a table with the metric names",
    r'\b__main__\.': "a `__main__.` prefix, as in an error's repr: print the error (`print(e)`) or test it (`test_fail`)",
    r'/tmp/|/var/folders/|\btmp[a-z0-9_]{8}\b': "a temporary folder's path, different on every run: work from the folder (contextlib.chdir) and name paths relative to it, or show the folder as the notebook names it",
}

def load(nb:Path) -> dict: return json.loads(nb.read_text())

def joined(value) -> str:
    "A stored output field as one string: nbformat keeps text as a list of lines or as one string"
    return ''.join(value) if isinstance(value, list) else value

def outputs(nb:Path):
    "(cell index, output) for every stored output of `nb`"
    for i, c in enumerate(load(nb)['cells']):
        for o in c.get('outputs', []): yield i, o

def output_text(o:dict) -> str:
    "The text a reader sees in output `o` (streams and plain/html/markdown results; not images)"
    if 'text' in o: return ''.join(o['text'])
    data = o.get('data', {})
    return ''.join(str(joined(data[k])) for k in ('text/plain', 'text/html', 'text/markdown') if k in data)

def shown_text(o:dict) -> str:
    "The text a reader sees in output `o`: a front-end shows a picture or HTML instead of the plain text beside it"
    data = o.get('data', {})
    if any(k.startswith('image/') or k == 'text/html' for k in data): o = {'data': {k: v for k, v in data.items() if k != 'text/plain'}}
    return output_text(o)

def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 10, NOTEBOOKS

def test_stored_outputs_stay_small():
    sizes = {nb.name: sum(len(json.dumps(o)) for _, o in outputs(nb)) for nb in NOTEBOOKS}
    total = sum(sizes.values())
    biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
    assert total <= OUTPUT_LIMIT, f"{total:,} bytes of stored outputs, over {OUTPUT_LIMIT:,}; the biggest: {biggest}"

def test_each_figure_is_small_and_stored_once():
    seen = {}
    for nb in NOTEBOOKS:
        for i, o in outputs(nb):
            data = o.get('data', {})
            png = data.get('image/png', data.get('image/jpeg'))
            if png is None: continue
            png = joined(png)
            assert len(png) <= FIGURE_LIMIT, f"{nb.name} cell {i}: a {len(png):,}-byte figure (limit {FIGURE_LIMIT:,}): smaller figsize or dpi"
            digest = hashlib.sha256(base64.b64decode(png)).hexdigest()
            assert digest not in seen, f"{nb.name} cell {i} stores the same picture as {seen[digest]}"
            seen[digest] = f"{nb.name} cell {i}"

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_no_noise_in_stored_outputs(nb):
    for i, o in outputs(nb):
        html = o.get('data', {}).get('text/html')
        if html is not None:
            html = joined(html)
            assert '<progress' not in html, f"{nb.name} cell {i} stores a progress bar (.ci/run_notebooks.py drops them)"
            assert re.sub(r'<style>.*?</style>|<[^>]+>|\s', '', html, flags=re.S), f"{nb.name} cell {i} stores an empty HTML display"
        text, shown = output_text(o), shown_text(o)
        for needle, why in NOISE.items():
            assert needle not in text, f"{nb.name} cell {i} shows {needle!r}: {why}"
        for pattern, why in NOISE_PATTERNS.items():
            found = re.search(pattern, shown)
            assert not found, f"{nb.name} cell {i} shows {found[0]!r}: {why}"

def pictures(o:dict) -> dict:
    "The images stored in output `o`, by MIME type, opened with PIL"
    from PIL import Image
    data = o.get('data', {})
    return {k: Image.open(io.BytesIO(base64.b64decode(joined(v)))) for k, v in data.items() if k.startswith('image/')}

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_no_output_stores_one_picture_twice(nb):
    "A PIL image offers a front-end both PNG and JPEG, and a notebook stores both: a reader sees one"
    for i, o in outputs(nb):
        sizes = [im.size for im in pictures(o).values()]
        assert len(sizes) == len(set(sizes)), f"{nb.name} cell {i} stores the same {sizes[0][0]}x{sizes[0][1]} picture as {' and '.join(pictures(o))}: display one (IPython.display.display_png)"

MIN_DPI = 72   # below it a 10-point tick label is under 10 pixels tall (issue 30 item 5)

def is_figure(o:dict) -> bool:
    "Whether output `o` is a matplotlib figure (its text is `<Figure size ...>`), not a photo or a PIL image shown pixel for pixel"
    return output_text(o).startswith('<Figure size')

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_figures_drawn_at_72_dpi_or_more(nb):
    "matplotlib writes the dpi it drew at into its PNG; .ci/run_notebooks.py keeps it when it stores a figure compactly (JPEG or fewer colours)"
    for i, o in outputs(nb):
        for kind, im in pictures(o).items():
            dpi = im.info.get('dpi')
            if dpi is None:
                assert not is_figure(o), f"{nb.name} cell {i}: a figure stored as {kind} without its dpi: re-run the notebook with .ci/run_notebooks.py, which keeps it"
                continue
            assert round(min(dpi)) >= MIN_DPI, f"{nb.name} cell {i}: a figure at {min(dpi):.0f} dpi as stored, under {MIN_DPI}: raise its dpi (or make it narrower, if it is scaled down to fit)"

def code_of(nb:Path) -> str:
    "The notebook's Python, cell after cell, without shell escapes and magics"
    cells = [''.join(c['source']) for c in load(nb)['cells'] if c['cell_type'] == 'code']
    lines = [l for src in cells for l in src.splitlines() if not l.lstrip().startswith(('!', '%'))]
    return '\n'.join(lines)

def imported_names(tree) -> dict:
    "name: line, for every name an import statement binds (those marked `# noqa: F401` are re-exports)"
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                if a.name == '*': continue
                names[(a.asname or a.name).split('.')[0]] = node.lineno
    return names

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_every_imported_name_is_used(nb):
    code = code_of(nb)
    tree = ast.parse(code)
    lines = code.splitlines()
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    used |= set(re.findall(r'\b\w+\b', ' '.join(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))))  # in __all__, code strings
    unused = [f"{name} (line {line}: {lines[line - 1].strip()[:60]})" for name, line in imported_names(tree).items()
              if name not in used and 'noqa' not in lines[line - 1]]
    assert not unused, f"{nb.name} imports names it never uses: {unused}"

ROOT = Path(__file__).parents[1]

def test_real_switch_reaches_the_download_and_says_what_to_do(subprocess_env, tmp_path):
    env = {**subprocess_env, 'PETBREEDS_REAL': '1', 'PETBREEDS_HOME': str(tmp_path)}
    nbdev_test = Path(sys.executable).parent/'nbdev_test'
    res = subprocess.run([str(nbdev_test), '--path', 'nbs/08_chapter.ipynb'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "can't reach the Oxford-IIIT Pet archive at https://s3.amazonaws.com/fast-ai-imageclas/oxford-iiit-pet.tgz" in out
    assert '--demo' in out

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_scratch_folder_is_removed_at_the_end(nb):
    "A notebook that writes files makes one scratch folder (any other goes inside it) and removes it in its last cell"
    cells = [''.join(c['source']) for c in load(nb)['cells'] if c['cell_type'] == 'code']
    made = [l.strip() for src in cells if '#| export' not in src for l in src.splitlines()
            if 'mkdtemp(' in l and 'dir=' not in l and not l[:1].isspace()]   # top-level statements: a function's default is its caller's business
    if not made: return
    assert len(made) == 1, f"{nb.name} makes {len(made)} scratch folders: make one and put the rest inside it (mkdtemp(dir=...)): {made}"
    name = re.match(r'(\w+) = Path\(tempfile\.mkdtemp\(', made[0])
    assert name, f"{nb.name}: expected `NAME = Path(tempfile.mkdtemp(...))`, got {made[0]}"
    assert re.search(rf"shutil\.rmtree\({name[1]}\b", cells[-1]), f"{nb.name} leaves its scratch folder {name[1]} behind: remove it in the last cell"
    if any("os.environ['PETBREEDS_HOME'] =" in src for src in cells):   # nbdev_test runs the next notebook in the same process
        assert "PETBREEDS_HOME" in cells[-1], f"{nb.name} leaves PETBREEDS_HOME naming the folder it removed: unset it in the last cell"
