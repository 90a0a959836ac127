"""Any pet data set (issue 26), through the command: a folder per class named by the user, train/valid/test folders,
Stanford Dogs' WordNet names, a CSV of labels with a few wrong ones, labels in the file names; then the hostile
layouts: a class of one image, an empty class folder, a CSV naming missing files, duplicate and conflicting rows,
a byte-order mark, a class folder that links back up the tree. Each gives the right answer or one clear line, and
the user's folder is the same, byte for byte, afterwards.

Two models are trained (one on train/valid/test folders, one on a CSV). The first runs the installed command in a
subprocess, as a user does; the rest run the same command in this process (`petbreeds.cli.main`: the same parser and
code, without a new interpreter importing torch and fastai for each step).
"""
import csv
import json
import os
import shutil

import pytest

from petbreeds.cli import main
from petbreeds.model_file import read_model_meta
from petbreeds.testing import relay_kit, synthetic_pets
from test_cli import petbreeds_cmd
from test_data import snapshot

CLASSES = {'Luna': 'Bengal', 'Max à la plage': 'pug', "O'Malley": 'samoyed'}   # a user's names: accents, spaces, quotes
SMALL = ('--arch', 'resnet18', '--size', '32', '--presize', '48', '--bs', '4', '--freeze-epochs', '0')

@pytest.fixture(scope='module')
def kit(tmp_path_factory):
    return synthetic_pets(tmp_path_factory.mktemp('kit')/'images', per_class=8, size=48)

@pytest.fixture(scope='module')
def presplit(kit, tmp_path_factory, subprocess_env):
    "A model trained on train/ and valid/ folders of three user-named classes (a test/ folder beside them)"
    root = tmp_path_factory.mktemp('presplit')
    data = relay_kit(kit, root/'data', CLASSES, 'presplit')
    before = snapshot(data)
    res = petbreeds_cmd('train', data, *SMALL, '--epochs', '1', '--out', root/'run', env=subprocess_env, cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(data=data, run=root/'run', model=root/'run'/'model.safetensors', train=res, before=before, root=root)

def cli(*args, capsys):
    "`petbreeds ARGS` in this process: (exit code, stdout, stderr)"
    capsys.readouterr()
    code = main(list(map(str, args)))
    out = capsys.readouterr()
    return code, out.out, out.err

def check(*args, capsys): return cli('check', *args, capsys=capsys)

def test_presplit_trains_on_the_given_split_and_evaluates_its_test_folder(presplit, capsys):
    assert 'petbreeds: labels: folders: train/ and valid/ folders' in presplit['train'].stderr
    config = json.loads((presplit['run']/'config.json').read_text())
    assert (config['train_images'], config['valid_images'], config['labels'], config['classes']) == (12, 6, 'folders', 3)
    meta = read_model_meta(presplit['model'])
    assert meta['vocab'] == sorted(CLASSES) and meta['labels'] == 'folders' and meta['species'] == [None] * 3
    code, out, err = cli('evaluate', presplit['model'], presplit['data'], '--json', '--out', presplit['root']/'ev-test', capsys=capsys)
    assert code == 0, err[-2000:]
    doc = json.loads(out)
    assert (doc['images'], doc['split'], doc['labels'], doc['classes_without_images']) == (6, 'test', 'folders', [])
    assert (presplit['root']/'ev-test'/'per_class.csv').exists() and not (presplit['root']/'ev-test'/'per_breed.csv').exists()
    code, out, err = cli('evaluate', presplit['model'], capsys=capsys)   # the run's own folder, which has a test/ folder too
    assert code == 0 and '6 images (test of' in out, out + err[-2000:]
    code, out, err = cli('predict', presplit['model'], presplit['data']/'test'/'Luna'/'IMG_0002.jpg', '--json', capsys=capsys)
    answer = json.loads(out)
    assert answer['predictions'][0]['label'] in CLASSES and 'species' not in answer   # no species rather than a wrong one
    assert snapshot(presplit['data']) == presplit['before']

@pytest.mark.hostile
def test_every_layout_of_the_same_classes_is_labelled_and_evaluated(presplit, kit, tmp_path, capsys):
    "A folder per class, Stanford's WordNet names, a CSV, a regex: check says which source; the model evaluates a folder as it was labelled"
    layouts = {'folders': (), 'wordnet': (), 'csv': ('--labels', 'csv'), 'regex': ('--labels', r'regex:^(.+)\.\d+\.jpg$')}
    sources = {'folders': 'folders', 'wordnet': 'folders', 'csv': 'csv', 'regex': 'regex'}
    for layout, labels in layouts.items():
        data = relay_kit(kit, tmp_path/layout, CLASSES, layout)
        before = snapshot(data)
        code, out, err = check(data, *labels, capsys=capsys)
        assert code == 0, out + err
        assert '24 image files, 24 usable, 3 classes' in out and "largest: O'Malley (8)" in out, out
        assert out.startswith(f"{data}: labels from {sources[layout]}: "), out
        if layout == 'wordnet': assert 'without their WordNet id: n02085620-Luna -> Luna' in out
        assert snapshot(data) == before
    code, out, err = cli('evaluate', presplit['model'], tmp_path/'wordnet', '--json', '--out', tmp_path/'ev-wordnet', capsys=capsys)
    assert code == 0 and (json.loads(out)['images'], json.loads(out)['split']) == (24, 'all'), err[-2000:]   # folders, as the model was trained
    code, out, err = check(tmp_path/'regex', capsys=capsys)   # no layout: one line, and how to pick one
    assert code == 2 and err.count('\n') == 1 and 'has no layout petbreeds knows' in err and '--labels regex:PATTERN' in err
    shutil.copy(tmp_path/'csv'/'labels.csv', tmp_path/'folders'/'labels.csv')   # two layouts fit
    code, out, err = check(tmp_path/'folders', capsys=capsys)
    assert code == 2 and 'fits 2 ways of labelling' in err and '--labels csv' in err and '--labels folders' in err, err

def test_a_class_the_model_never_saw_is_one_line_and_a_missing_one_is_named(presplit, kit, tmp_path, capsys):
    data = relay_kit(kit, tmp_path/'more', {'Max à la plage': 'pug', "O'Malley": 'samoyed', 'Biscuit': 'beagle'}, 'folders')
    code, out, err = cli('evaluate', presplit['model'], data, '--out', tmp_path/'ev', capsys=capsys)
    assert code == 0, err[-2000:]
    assert [l for l in err.splitlines() if 'never saw' in l] == ['petbreeds: left out 8 images of 1 class the model never saw: Biscuit'], err
    assert '16 images (all of' in out and 'classes with no images here: Luna' in out, out
    assert json.loads((tmp_path/'ev'/'evaluation.json').read_text())['classes_without_images'] == ['Luna']

@pytest.mark.hostile
def test_suspects_are_the_images_whose_given_label_is_least_likely(presplit, kit, tmp_path, capsys):
    "A CSV with three wrong labels and a file named like a formula: the suspects are the lowest p(given label), as the predictor computes it"
    from petbreeds.inference import Predictor
    data = relay_kit(kit, tmp_path/'data', CLASSES, 'csv')
    (data/'photos'/'000003.jpg').rename(data/'=000003.jpg')   # a name a spreadsheet would run
    with open(data/'labels.csv', newline='', encoding='utf-8') as f: rows = list(csv.reader(f))
    rows[4][0] = '=000003.jpg'
    for i, label in {1: 'Max à la plage', 9: "O'Malley", 17: 'Luna'}.items(): rows[i][1] = label   # given another class's name
    with open(data/'labels.csv', 'w', newline='', encoding='utf-8') as f: csv.writer(f).writerows(rows)
    before = snapshot(data)
    code, out, err = cli('evaluate', presplit['model'], data, '--labels', 'csv', '--suspects', '5', '--out', tmp_path/'ev', capsys=capsys)
    assert code == 0, err[-2000:]
    assert 'suspect labels' in out and 'suspects.csv' in out
    with open(tmp_path/'ev'/'suspects.csv', newline='', encoding='utf-8') as f: suspects = list(csv.DictReader(f))
    assert list(suspects[0]) == ['file', 'given', 'predicted', 'probability'] and len(suspects) == 5
    predictor = Predictor.from_file(presplit['model'])
    given = {name: label for name, label in rows[1:]}
    answers = predictor.predict([data/name for name in given], top_k=3)
    p_given = {name: next(p['probability'] for p in a['predictions'] if p['label'] == given[name]) for name, a in zip(given, answers)}
    lowest = sorted(p_given.values())[:5]
    for s, p in zip(suspects, lowest):
        name = s['file'][1:] if s['file'].startswith("'=") else s['file']   # neutralised for spreadsheets
        assert abs(float(s['probability']) - p_given[name]) < 2e-3 and abs(float(s['probability']) - p) < 2e-3, (s, p)
        assert s['given'] == given[name]
    labels_csv = (tmp_path/'ev'/'labels.csv').read_text(encoding='utf-8')
    assert "\n'=000003.jpg,Luna" in labels_csv and '\n=' not in labels_csv
    assert (tmp_path/'ev'/'suspects.png').read_bytes()[:4] == b'\x89PNG'
    # the labels.csv evaluate wrote reads back as the same labels: correct it, train on it with --labels csv:FILE
    code, out, err = check(data, '--labels', f"csv:{tmp_path/'ev'/'labels.csv'}", '--json', capsys=capsys)
    assert code == 0 and json.loads(out)['per_class'] == {'Luna': 8, 'Max à la plage': 8, "O'Malley": 8}, out + err
    assert snapshot(data) == before

@pytest.mark.hostile
def test_hostile_layouts_are_one_line_or_the_right_answer(kit, tmp_path, capsys):
    "A class of one image, an empty class folder, a link back up; a CSV with a missing file, a duplicate and a conflicting row, a BOM"
    data = relay_kit(kit, tmp_path/'data', CLASSES, 'folders')
    shutil.copy(kit/'beagle_1.jpg', (data/'Solo').mkdir() or data/'Solo'/'one.jpg')   # a class of one image
    (data/'Empty').mkdir()                                                               # an empty class folder
    before = snapshot(data)
    os.symlink('..', data/'Up')                                                          # a class folder linking back up the tree
    code, out, err = check(data, capsys=capsys)
    assert code == 1, out + err
    assert "PROBLEM: class 'Solo' has 1 image: a split needs 2 or more" in out
    assert "note: 'Empty/' holds no images: not a class" in out and "note: left out 'Up': a link to '..'" in out
    assert '25 image files, 25 usable, 4 classes' in out, out
    os.unlink(data/'Up')
    assert snapshot(data) == before

    flat = relay_kit(kit, tmp_path/'flat', CLASSES, 'csv')
    with open(flat/'labels.csv', newline='', encoding='utf-8') as f: rows = list(csv.reader(f))
    rows += [['photos/gone.jpg', 'Luna'], rows[1], [rows[2][0], "O'Malley"]]   # a missing file, a duplicate row, a conflicting one
    with open(flat/'labels.csv', 'w', newline='', encoding='utf-8-sig') as f: csv.writer(f).writerows(rows)   # with a byte-order mark
    before = snapshot(flat)
    code, out, err = check(flat, capsys=capsys)
    assert code == 1, out + err
    assert "has two labels in labels.csv: 'Luna' (row 3) and 'O'Malley' (row 28)" in out
    assert '1 file named in labels.csv, but no such file: photos/gone.jpg' in out
    assert 'twice with the same label (rows 2 and 27)' in out
    assert '3 classes' in out and 'Luna ' in out   # the byte-order mark is not part of the header
    code, out, err = cli('train', flat, *SMALL, '--epochs', '1', '--out', tmp_path/'run', capsys=capsys)
    assert code == 2 and err.count('\n') == 1 and 'has two labels in labels.csv' in err and 'keep one label per file' in err, err
    assert snapshot(flat) == before
    assert not (tmp_path/'run'/'model.safetensors').exists()

# Any number of classes (issue 26 item 2): two, and a few hundred; a species for the user's classes only when they give it
TINY = ('--arch', 'resnet18', '--size', '16', '--presize', '24', '--bs', '32', '--freeze-epochs', '0', '--epochs', '1')

@pytest.fixture
def standin(subprocess_env, monkeypatch):
    "Training in this process starts from the resnet18 stand-in weights, as the subprocesses do"
    monkeypatch.setenv('TORCH_HOME', subprocess_env['TORCH_HOME'])

def test_two_classes_end_to_end_with_the_users_species(kit, standin, tmp_path, capsys):
    "Two classes, and a CSV of class,species: the model keeps the species, predict --csv gives it, and it is the top class's"
    data = relay_kit(kit, tmp_path/'data', {'Luna': 'Bengal', 'Max': 'pug'}, 'folders')
    (tmp_path/'species.csv').write_text('class,species\nLuna,cat\nMax,dog\n', encoding='utf-8')
    before = snapshot(data)
    code, out, err = cli('train', data, *SMALL, '--epochs', '1', '--species', tmp_path/'species.csv', '--out', tmp_path/'run', capsys=capsys)
    assert code == 0, err[-3000:]
    assert f"species: 2 of 2 classes from {tmp_path/'species.csv'}" in err, err
    meta = read_model_meta(tmp_path/'run'/'model.safetensors')
    assert (meta['vocab'], meta['species']) == (['Luna', 'Max'], ['cat', 'dog'])
    code, out, err = cli('predict', tmp_path/'run'/'model.safetensors', data, '--csv', tmp_path/'p.csv', capsys=capsys)
    assert code == 0, err[-2000:]
    with open(tmp_path/'p.csv', newline='', encoding='utf-8') as f: rows = list(csv.DictReader(f))
    assert len(rows) == 16 and {'species', 'species_probability'} <= set(rows[0]), rows[0]
    for r in rows:   # two classes, one species each: the species is the top class's, with its probability
        assert r['species'] == {'Luna': 'cat', 'Max': 'dog'}[r['label_1']] and float(r['species_probability']) == pytest.approx(float(r['probability_1']), abs=1e-5), r
    assert snapshot(data) == before

def test_three_hundred_classes_check_train_and_per_class(kit, standin, tmp_path, capsys):
    "300 classes of 2 tiny images: check counts them, one epoch trains, per_class.csv has a row each; a species for 1 class of 300 is no species"
    import numpy as np
    from PIL import Image
    rng, data = np.random.default_rng(0), tmp_path/'data'
    names = [f'class {i:03d}' for i in range(300)]
    for i, name in enumerate(names):   # each picture its own (check refuses one picture under two classes): a colour and noise
        (data/name).mkdir(parents=True)
        colour = rng.integers(0, 256, 3)
        for j in range(2): Image.fromarray(np.clip(colour + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype('uint8')).save(data/name/f'{j}.png')
    (tmp_path/'species.csv').write_text('class 000,rabbit\n', encoding='utf-8')
    code, out, err = check(data, capsys=capsys)
    assert code == 0, out + err
    assert '600 image files, 600 usable, 300 classes' in out, out
    code, out, err = cli('train', data, *TINY, '--species', tmp_path/'species.csv', '--out', tmp_path/'run', capsys=capsys)
    assert code == 0, err[-3000:]
    assert "species: 1 of 300 classes from" in err and "'class 001'" in err and 'and 294 more, so answers give no species' in err, err
    with open(tmp_path/'run'/'per_class.csv', newline='', encoding='utf-8') as f: rows = list(csv.DictReader(f))
    assert len(rows) == 300 and sorted(r['class'] for r in rows) == names and 'species' not in rows[0]
    with Image.open(tmp_path/'run'/'confusion.png') as im: assert max(im.size) <= 2500, im.size   # not 0.32 inch a class: 10,000 pixels
    meta = read_model_meta(tmp_path/'run'/'model.safetensors')
    assert len(meta['vocab']) == 300 and meta['species'][0] == 'rabbit' and meta['species'][1:] == [None] * 299
    code, out, err = cli('predict', tmp_path/'run'/'model.safetensors', data/'class 000'/'0.png', '--json', capsys=capsys)
    assert code == 0 and 'species' not in json.loads(out), out + err   # one class of 300 with a species: none rather than a wrong one

@pytest.mark.hostile
@pytest.mark.parametrize('text,fragment', [
    (None, 'does not exist'),
    ('Luna,cat\npug,cat\n', "gives 'pug' the species 'cat', but it is a dog"),
    ('Luna,cat\nLuna,dog\n', "gives 'Luna' two species: 'cat' and 'dog'"),
    ('class,species\nLuna\n', "row 2 of"),
    ('', 'has no rows')])
def test_a_bad_species_file_is_one_line_before_any_work(kit, tmp_path, capsys, text, fragment):
    data = relay_kit(kit, tmp_path/'data', {'Luna': 'Bengal', 'Max': 'pug'}, 'folders')
    species = tmp_path/'species.csv'
    if text is not None: species.write_text(text, encoding='utf-8')
    code, out, err = cli('train', data, *TINY, '--species', species, '--out', tmp_path/'run', capsys=capsys)
    assert code == 2 and err.count('\n') == 1 and fragment in err and 'Traceback' not in err, err
    assert not (tmp_path/'run').exists()

@pytest.mark.hostile
def test_kaggle_names_get_the_regex_that_reads_them(kit, tmp_path, capsys):
    "cat.0.jpg, dog.3.jpg (Kaggle's cats and dogs): auto is one line giving the --labels regex, and that regex reads them"
    import re
    data = relay_kit(kit, tmp_path/'data', {'cat': 'Bengal', 'dog': 'pug'}, 'regex')
    assert sorted(p.name for p in data.iterdir())[:2] == ['cat.0.jpg', 'cat.1.jpg']
    code, out, err = check(data, capsys=capsys)
    assert code == 2 and err.count('\n') == 1 and 'has no layout petbreeds knows' in err, err
    assert "these names read <label>.<number> (e.g. cat.0.jpg): --labels 'regex:" in err, err
    suggested = re.search(r"--labels '(regex:[^']+)'", err).group(1)
    code, out, err = check(data, '--labels', suggested, capsys=capsys)
    assert code == 0 and '16 image files, 16 usable, 2 classes' in out and 'cat ' in out and 'dog ' in out, out + err
