"""A model with the user's own classes through every command that uses a model: predict on a folder to CSV, explain,
the Space, and the web page in a real browser. Class names are untrusted input: HTML, formulas, any script.
The models are `petbreeds.testing.class_model`'s: untrained, 32 pixels, written in a second, no training."""
import csv
import json
import re

import pytest
from PIL import Image

from test_cli import assert_one_line_error, petbreeds_cmd
from test_serve import BROWSER_ARGS, CALL_TIMEOUT, CHROMIUM, free_port, running, serve_cmd

HTML_NAME = '<img src=x onerror=alert(1)>'
FORMULA_NAME = '=HYPERLINK("http://example.com","click")'
CLASSES = ['Кошка Мурка', '柴犬', HTML_NAME, FORMULA_NAME]

@pytest.fixture(scope='module')
def custom(tmp_path_factory):
    "A model of CLASSES (no run folder beside it), and a folder of photos at two depths with a broken file among them"
    from petbreeds.testing import class_model, synthetic_pets
    d = tmp_path_factory.mktemp('classes')
    model = class_model(d/'model'/'model.safetensors', CLASSES)
    kit = synthetic_pets(d/'kit', per_class=1, size=64, seed=3, quirks=True)
    photos = d/'photos'
    for i, name in enumerate(['Bengal_1.jpg', 'pug_1.jpg', 'beagle_1.jpg', 'Siamese_1.jpg']):
        dest = photos/('luna' if i % 2 else 'max/older')/name
        dest.parent.mkdir(parents=True, exist_ok=True); dest.write_bytes((kit/name).read_bytes())
    (photos/'luna'/'broken.jpg').write_bytes((kit/'Bengal_906.jpg').read_bytes())   # a JPEG cut off half way
    (photos/'notes.txt').write_text('not an image, not looked at')
    return {'model': model, 'photos': photos, 'dir': d}

def predictor_answers(model, files) -> dict:
    from petbreeds.inference import Predictor
    return {str(f): r for f, r in zip(files, Predictor.from_file(model).predict(files, top_k=len(CLASSES)))}

@pytest.mark.hostile
def test_predict_a_folder_to_csv_with_a_broken_file(custom, subprocess_env, tmp_path):
    from petbreeds.testing import folder_digest
    before = folder_digest(custom['photos'])
    out = tmp_path/'out'/'predictions.csv'
    res = petbreeds_cmd('predict', custom['model'], custom['photos'], '--csv', out, '--top-k', 2, env=subprocess_env)
    assert res.returncode == 1, res.stderr   # one file could not be read: said, and the rest are predicted
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith('petbreeds: error: ') and "broken.jpg' is damaged or cut short" in errors[0], res.stderr
    assert '4 of 5 images predicted' in res.stdout
    with open(out, newline='', encoding='utf-8') as f: rows = list(csv.reader(f))
    assert rows[0] == ['file', 'label_1', 'probability_1', 'label_2', 'probability_2', 'error']   # no species: these classes have none
    by_file = {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    good = sorted(p for p in custom['photos'].rglob('*.jpg') if p.name != 'broken.jpg')
    assert sorted(by_file) == sorted(map(str, good + [custom['photos']/'luna'/'broken.jpg'])), list(by_file)   # every depth; not notes.txt
    assert 'damaged or cut short' in by_file[str(custom['photos']/'luna'/'broken.jpg')]['error']
    safe = {n: ("'" + n if n.startswith('=') else n) for n in CLASSES}   # the formula is text in a spreadsheet
    for f, want in predictor_answers(custom['model'], good).items():
        got = by_file[f]
        assert got['error'] == '' and [got['label_1'], got['label_2']] == [safe[p['label']] for p in want['predictions'][:2]], (got, want)
        assert float(got['probability_1']) == pytest.approx(want['predictions'][0]['probability'], abs=1e-5)
    cells = [c for r in rows for c in r]
    assert not any(c.startswith(('=', '+', '-', '@')) for c in cells), cells
    assert folder_digest(custom['photos']) == before   # the data folder is as it was

@pytest.mark.hostile
def test_predict_lines_and_json_follow_the_models_classes(custom, subprocess_env):
    photo = custom['photos']/'luna'/'pug_1.jpg'
    want = predictor_answers(custom['model'], [photo])[str(photo)]
    res = petbreeds_cmd('predict', custom['model'], photo, '--json', '--top-k', 4, env=subprocess_env)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert [p['label'] for p in got['predictions']] == [p['label'] for p in want['predictions']] and sorted(p['label'] for p in got['predictions']) == sorted(CLASSES)
    assert 'species' not in got and 'species_probability' not in got   # absent, not wrong
    assert_one_line_error(petbreeds_cmd('predict', custom['model'], photo, '--csv', custom['photos'], env=subprocess_env), 'is a folder')

def test_explain_on_a_custom_class_model(custom, subprocess_env, tmp_path):
    photo = custom['photos']/'luna'/'pug_1.jpg'
    res = petbreeds_cmd('explain', custom['model'], photo, '--out', tmp_path/'pictures', env=subprocess_env)
    assert res.returncode == 0, res.stderr
    top = predictor_answers(custom['model'], [photo])[str(photo)]['predictions'][0]['label']
    assert res.stdout.startswith(f"{photo}: {top} ") and (tmp_path/'pictures'/'pug_1.gradcam.png').is_file(), res.stdout

@pytest.mark.hostile
def test_the_space_lists_the_models_classes(custom, subprocess_env, tmp_path):
    res = petbreeds_cmd('export', custom['model'], '--space', tmp_path/'space', env=subprocess_env, timeout=300)
    assert res.returncode == 0, res.stderr
    readme = (tmp_path/'space'/'README.md').read_text(encoding='utf-8')
    assert '\ntitle: Image classes (resnet18)\n' in readme and 'Oxford-IIIT' not in readme and not re.search(r'\bbreeds?\b', readme)
    assert '**Classes** (4): **Кошка Мурка**, **柴犬**, **&lt;img src=x onerror=alert\\(1\\)&gt;**, **=HYPERLINK\\(&quot;http\\://example\\.com&quot;,&quot;click&quot;\\)**' in readme, readme
    assert '<img' not in readme and not (tmp_path/'space'/'examples').exists()   # a bare model file: no run, no examples

@pytest.mark.hostile
def test_browser_shows_custom_class_names_as_text(custom, subprocess_env, tmp_path):
    "The page of a model whose classes are Cyrillic, Japanese, HTML and a formula: names shown as written, no script run"
    import playwright.sync_api as playwright
    from petbreeds.testing import folder_digest
    expect = playwright.expect
    photo = custom['photos']/'max'/'older'/'Bengal_1.jpg'
    want = predictor_answers(custom['model'], [photo])[str(photo)]
    before = folder_digest(custom['photos'])
    port = free_port(); url = f'http://127.0.0.1:{port}/'
    (tmp_path/'cwd').mkdir(); (tmp_path/'tmp').mkdir()
    env = {**subprocess_env, 'TMPDIR': str(tmp_path/'tmp'), 'GRADIO_ANALYTICS_ENABLED': 'False'}
    dialogs = []
    with running(serve_cmd(custom['model'], port), url, env=env, cwd=tmp_path/'cwd', log=tmp_path/'server.log'):
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, timeout=60_000)
            try:
                page = browser.new_page(viewport={'width': 1280, 'height': 1000})
                page.set_default_timeout(CALL_TIMEOUT * 1000)
                page.on('dialog', lambda d: (dialogs.append(d.message), d.dismiss()))
                page.goto(url)
                intro = page.locator('#intro')
                expect(intro).to_contain_text('one of its 4 classes', timeout=CALL_TIMEOUT * 1000)
                for name in CLASSES: expect(intro).to_contain_text(name)          # as the characters they are
                assert page.title() == 'Image classes'
                page.locator('#photo input[type=file]').set_input_files(str(photo))
                expect(page.locator('#breeds [data-testid=label-output-value]')).to_have_text(want['predictions'][0]['label'], timeout=CALL_TIMEOUT * 1000)
                for top in want['predictions'][:3]: expect(page.locator('#breeds')).to_contain_text(top['label'])   # the top 3 of 4, as text
                expect(page.locator('#summary')).to_contain_text('predicted in')
                expect(page.locator('#summary')).not_to_contain_text('cat')    # no species line for these classes
                expect(page.locator('#heatmap img')).to_be_visible(timeout=CALL_TIMEOUT * 1000)
                page.screenshot(path=str(tmp_path/'classes.png'), full_page=True)
                assert page.locator('img[src="x"]').count() == 0                # the HTML name made no element
                assert page.evaluate("document.body.innerHTML.includes('<img src=\"x\"')") is False
            finally: browser.close()
    assert dialogs == [], dialogs                                               # and no alert ran
    assert 'Traceback' not in (tmp_path/'server.log').read_text()
    assert folder_digest(custom['photos']) == before
