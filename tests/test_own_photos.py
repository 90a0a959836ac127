"""Issue 26's "done when", as one user's afternoon: their own photos in a folder per class, three classes they named,
and the same photos split into train/, valid/ and test/ folders; `check`, `train`, `evaluate`, `predict --csv`,
`explain`, `export --space` and `serve`, from the command line. Each layout is checked and trained on (one epoch,
32 pixels, the resnet18 stand-in weights); the commands after `train` share the presplit layout's model. The photos
are the synthetic kit re-laid out (`petbreeds.testing.relay_kit`); the user's folders are the same, byte for byte,
afterwards. The commands run in this process (`petbreeds.cli.main`), except `serve`, which is a real server on loopback.
"""
import csv
import json

import pytest

from petbreeds.cli import main
from petbreeds.testing import relay_kit, synthetic_pets
from test_data import snapshot
from test_serve import ask, free_port, running, serve_cmd

CLASSES = {'Luna': 'Bengal', 'Max à la plage': 'pug', "O'Malley": 'samoyed'}   # three names a user gave their pets
SMALL = ('--arch', 'resnet18', '--size', '32', '--presize', '48', '--bs', '4', '--freeze-epochs', '0', '--epochs', '1')

def cli(capsys, *args):
    "`petbreeds ARGS` in this process: (exit code, stdout, stderr)"
    capsys.readouterr()
    code = main(list(map(str, args)))
    out = capsys.readouterr()
    return code, out.out, out.err

def test_own_photos_through_every_command(subprocess_env, tmp_path, monkeypatch, capsys):
    from petbreeds.inference import Predictor
    from petbreeds.model_file import read_model_meta
    monkeypatch.setenv('TORCH_HOME', subprocess_env['TORCH_HOME'])   # the stand-in ImageNet weights, offline
    kit = synthetic_pets(tmp_path/'kit', per_class=8, size=48)
    photos = relay_kit(kit, tmp_path/'photos', CLASSES, 'folders')      # photos/Luna/IMG_0000.jpg, ...
    split = relay_kit(kit, tmp_path/'split', CLASSES, 'presplit')       # split/{train,valid,test}/Luna/IMG_0000.jpg, ...
    before = {d: snapshot(d) for d in (photos, split)}

    # check: which labels, how many per class, no problems
    for data, source in ((photos, 'a folder per class'), (split, 'train/ and valid/ folders')):
        code, out, err = cli(capsys, 'check', data)
        assert code == 0 and out.startswith(f'{data}: labels from folders: {source}'), out + err
        assert 'no problems found' in out and "largest: O'Malley" in out, out

    # train on each layout: a random split of the folders; the given split of train/ and valid/
    for data, run, counts in ((photos, tmp_path/'run-photos', None), (split, tmp_path/'run-split', (12, 6))):
        code, out, err = cli(capsys, 'train', data, *SMALL, '--out', run)
        assert code == 0, err[-3000:]
        config = json.loads((run/'config.json').read_text())
        assert config['classes'] == 3 and config['labels'] == 'folders'
        if counts: assert (config['train_images'], config['valid_images']) == counts
        else: assert config['train_images'] + config['valid_images'] == 24
        assert read_model_meta(run/'model.safetensors')['vocab'] == sorted(CLASSES)
        assert (run/'per_class.csv').is_file() and not (run/'per_breed.csv').exists()
    model = tmp_path/'run-split'/'model.safetensors'

    # evaluate: the run's test/ folder, and the folder-per-class photos labelled as the model was
    code, out, err = cli(capsys, 'evaluate', model, split, '--json', '--out', tmp_path/'ev-test')
    assert code == 0, err[-2000:]
    doc = json.loads(out)
    assert (doc['images'], doc['split'], doc['classes_without_images']) == (6, 'test', []) and 0 <= doc['error_rate'] <= 1
    code, out, err = cli(capsys, 'evaluate', model, photos, '--out', tmp_path/'ev-photos')
    assert code == 0 and '24 images (all of' in out, out + err[-2000:]
    with open(tmp_path/'ev-photos'/'per_class.csv', newline='', encoding='utf-8') as f:
        assert sorted(r['class'] for r in csv.DictReader(f)) == sorted(CLASSES)

    # predict a folder, recursively, to a CSV: the model's classes, no species column (these classes have none)
    code, out, err = cli(capsys, 'predict', model, split/'test', '--csv', tmp_path/'predictions.csv', '--top-k', 3)
    assert code == 0, err[-2000:]
    with open(tmp_path/'predictions.csv', newline='', encoding='utf-8') as f: rows = list(csv.DictReader(f))
    assert len(rows) == 6 and 'species' not in rows[0]
    predictor = Predictor.from_file(model)
    for r, want in zip(rows, predictor.predict([r['file'] for r in rows], top_k=3)):
        assert [r['label_1'], r['label_2'], r['label_3']] == [p['label'] for p in want['predictions']], (r, want)

    # explain: the top class and a Grad-CAM picture
    photo = split/'test'/'Luna'/'IMG_0002.jpg'
    code, out, err = cli(capsys, 'explain', model, photo, '--out', tmp_path/'pictures')
    top = predictor.predict([photo])[0]['predictions'][0]['label']
    assert code == 0 and out.startswith(f'{photo}: {top} ') and (tmp_path/'pictures'/'IMG_0002.gradcam.png').is_file(), out + err[-2000:]

    # export --space: the Space names the user's classes and offers a few of the run's own validation images
    code, out, err = cli(capsys, 'export', model, '--space', tmp_path/'space')
    assert code == 0, err[-2000:]
    readme = (tmp_path/'space'/'README.md').read_text(encoding='utf-8')
    assert '**Classes** (3)' in readme and '**Luna**' in readme and 'Oxford-IIIT' not in readme, readme
    assert sorted(p.name for p in (tmp_path/'space'/'examples').iterdir()), 'no examples in the Space'

    # serve: a real server on loopback answers a photo with the user's classes, as the predictor does
    from gradio_client import Client
    port = free_port(); url = f'http://127.0.0.1:{port}/'
    (tmp_path/'cwd').mkdir(); (tmp_path/'tmp').mkdir()
    env = {**subprocess_env, 'TMPDIR': str(tmp_path/'tmp'), 'GRADIO_ANALYTICS_ENABLED': 'False'}
    with running(serve_cmd(model, port), url, env=env, cwd=tmp_path/'cwd', log=tmp_path/'server.log'):
        got = ask(Client(url, verbose=False), photo)
    want = predictor.predict([photo])[0]
    assert got['labels'] == [p['label'] for p in want['predictions']] and set(got['labels']) <= set(CLASSES), (got, want)
    assert got['probabilities'] == pytest.approx([p['probability'] for p in want['predictions']], abs=1e-4)
    assert got.get('species') is None

    assert {d: snapshot(d) for d in (photos, split)} == before   # nothing moved, renamed or written in the user's folders
