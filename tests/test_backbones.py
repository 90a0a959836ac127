"""A timm backbone through the whole path as a user runs it, offline: its stand-in weights loaded by timm from a
Hugging Face hub cache, then train -> predict -> export -> ONNX parity -> evaluate -> serve."""
import json

import numpy as np
import pytest
from conftest import STANDIN_DEMO

from petbreeds.demo import standin_file, use_standin_weights
from petbreeds.testing import synthetic_pets
from test_cli import assert_one_line_error, petbreeds_cmd
from test_serve import ask, free_port, running, serve_cmd

ARCH = 'efficientnet_b0'   # the smallest of the picks: the kit trains it in seconds

@pytest.fixture(scope='module')
def hub_env(subprocess_env):
    "The subprocess environment with the stand-ins' private hub cache, offline, as the demo sets it"
    home = use_standin_weights(ARCH)
    return {**subprocess_env, 'HF_HUB_CACHE': str(home/'huggingface'/'hub'), 'HF_HUB_OFFLINE': '1'}

@pytest.fixture(scope='module')
def timm_run(tmp_path_factory, hub_env):
    root = tmp_path_factory.mktemp('timm')
    images = synthetic_pets(root/'images', per_class=3, size=80)
    res = petbreeds_cmd('train', images, '--arch', ARCH, '--size', 64, '--presize', 80, '--bs', 16, '--epochs', 1,
                        '--freeze-epochs', 1, '--out', root/'run', env=hub_env)
    assert res.returncode == 0, res.stderr
    return root/'run', images

def test_train_loads_timms_pretrained_weights_from_the_hub_cache_offline(timm_run):
    run, _ = timm_run
    info = json.loads((run/'metrics.json').read_text())
    assert info['arch'] == ARCH and info['options']['weights'] == 'imagenet'
    from petbreeds.model_file import read_model_meta
    meta = read_model_meta(run/'model.safetensors')
    assert meta['arch'] == ARCH and meta['input']['size'] == 64

def test_the_body_started_from_the_stand_in(tmp_path, hub_env):
    "What timm loaded through the hub is the stand-in file, tensor for tensor (the head aside)"
    from safetensors.torch import load_file
    from petbreeds.data import pets_dataloaders
    from petbreeds.learner import pets_learner
    written = load_file(standin_file(ARCH))
    dls = pets_dataloaders(synthetic_pets(tmp_path/'img', per_class=1, size=80), bs=4, size=64, presize=80, device='cpu', progress=False)
    body = pets_learner(dls, ARCH).model[0].model.state_dict()
    assert set(body) == {k for k in written if not k.startswith('classifier.')}
    assert all(np.array_equal(body[k].numpy(), written[k].numpy()) for k in body)

def test_predict_export_and_onnx_agree(timm_run, hub_env, tmp_path):
    run, images = timm_run
    model, onnx = run/'model.safetensors', tmp_path/'model.onnx'
    photos = sorted(images.glob('*.jpg'))[:5]
    res = petbreeds_cmd('export', model, '--onnx', onnx, env=hub_env)
    assert res.returncode == 0, res.stderr
    from petbreeds.inference import Predictor
    torch_p, onnx_p = Predictor.from_file(model, backend='torch', precision='fp32'), Predictor.from_file(onnx, backend='onnx')
    x = np.stack([torch_p.prepare(p) for p in photos])
    assert np.abs(torch_p._run(x) - onnx_p._run(x)).max() < 1e-4   # the logits, not just the ranking
    by_cli = [json.loads(line) for line in petbreeds_cmd('predict', onnx, *photos, '--json', '--backend', 'onnx', env=hub_env).stdout.splitlines()]
    want = [r['predictions'] for r in torch_p.predict(photos)]
    got = [r['predictions'] for r in by_cli]
    assert [[p['label'] for p in r] for r in got] == [[p['label'] for p in r] for r in want]
    # probabilities are printed to 6 places: ONNX's and torch's float sums may round to neighbouring last digits
    assert max(abs(a['probability'] - b['probability']) for r, s in zip(got, want) for a, b in zip(r, s)) <= 2e-6

def test_evaluate_rebuilds_the_timm_learner(timm_run, hub_env):
    run, images = timm_run
    res = petbreeds_cmd('evaluate', run/'model.safetensors', images, env=hub_env)
    assert res.returncode == 0, res.stderr
    assert 'error_rate' in res.stdout

def test_serve_answers_with_a_timm_model(timm_run, hub_env, tmp_path):
    from gradio_client import Client
    from petbreeds.inference import Predictor
    run, images = timm_run
    port = free_port(); url = f'http://127.0.0.1:{port}/'
    photo = sorted(images.glob('*.jpg'))[0]
    with running(serve_cmd(run/'model.safetensors', port), url, env={**hub_env, 'GRADIO_ANALYTICS_ENABLED': 'False'}, cwd=tmp_path, log=tmp_path/'log'):
        got = ask(Client(url, verbose=False), photo)
    want = Predictor.from_file(run/'model.safetensors').predict([photo])[0]['predictions']
    assert got['labels'] == [p['label'] for p in want]

@pytest.mark.hostile
def test_unknown_names_and_missing_weights_are_one_line(hub_env, tmp_path):
    assert_one_line_error(petbreeds_cmd('train', '--demo', '--arch', 'convnext_tiyn', env=hub_env),
                          "unknown architecture 'convnext_tiyn' (did you mean convnext_tiny", 'petbreeds archs')
    images = synthetic_pets(tmp_path/'images', per_class=1, size=80)
    empty = {**hub_env, 'HF_HUB_CACHE': str(tmp_path/'empty-hub')}   # offline, and nothing cached
    assert_one_line_error(petbreeds_cmd('train', images, '--arch', 'resnet50.a1_in1k', '--size', 64, '--presize', 80, '--bs', 4, env=empty),
                          "can't get the pretrained weights for resnet50.a1_in1k from https://huggingface.co/timm/resnet50.a1_in1k", '--weights none')
    assert not (tmp_path/'empty-hub').exists() or not any((tmp_path/'empty-hub').rglob('*.safetensors'))

def test_archs_lists_the_picks_and_where_their_weights_are(hub_env):
    res = petbreeds_cmd('archs', env=hub_env)
    assert res.returncode == 0, res.stderr
    line = next(l for l in res.stdout.splitlines() if l.startswith(ARCH + ' '))
    assert 'timm' in line and f'weights here: {standin_file(ARCH)}' in line
    assert any(l.startswith('resnet34 ') and 'torchvision' in l for l in res.stdout.splitlines())
    found = petbreeds_cmd('archs', 'convnext_tiny', '--limit', 3, env=hub_env).stdout.splitlines()
    assert len(found) == 4 and all(l.startswith('convnext_tiny') for l in found[:3]) and '--limit' in found[3]

def test_recipe_options_train_from_the_command_line(subprocess_env, tmp_path):
    "--demo --recipe strong: the demo's sizes and model, the recipe's label smoothing; --mixup on top; each recorded with the run"
    res = petbreeds_cmd('train', *STANDIN_DEMO, '--recipe', 'strong', '--mixup', 0.4, '--epochs', 1, '--freeze-epochs', 0, '--out', tmp_path/'run', env=subprocess_env)
    assert res.returncode == 0, res.stderr
    options = json.loads((tmp_path/'run'/'metrics.json').read_text())['options']
    assert (options['recipe'], options['arch'], options['size'], options['label_smoothing'], options['mixup'], options['epochs']) == ('strong', 'resnet18', 64, 0.1, 0.4, 1)
    assert_one_line_error(petbreeds_cmd('train', '--demo', '--mixup', 0.4, '--cutmix', 1, env=subprocess_env), 'use one at a time')
    assert_one_line_error(petbreeds_cmd('train', '--demo', '--recipe', 'fast', env=subprocess_env), 'fast')

def test_explain_reads_a_timm_cnns_map_and_a_vits_tokens(timm_run, hub_env, tmp_path, monkeypatch):
    "Grad-CAM for timm: a CNN's feature map (efficientnet_b0), and a ViT's patch tokens laid back on their grid"
    from petbreeds.data import pets_dataloaders
    from petbreeds.explain import explain
    from petbreeds.learner import pets_learner, save_model
    run, images = timm_run
    photo = sorted(images.glob('*.jpg'))[0]
    (cnn,) = explain(run/'model.safetensors', [photo])
    assert cnn['cam'].shape == (2, 2) and cnn['cam'].max() == 1   # 64 pixels, stride 32
    for k, v in hub_env.items(): monkeypatch.setenv(k, v)
    use_standin_weights('deit_tiny_patch16_224')
    dls = pets_dataloaders(images, bs=4, size=64, presize=80, device='cpu', progress=False)
    vit = save_model(pets_learner(dls, 'deit_tiny_patch16_224'), tmp_path/'vit.safetensors')
    (res,) = explain(vit, [photo])
    assert res['cam'].shape == (4, 4) and 0 < res['probability'] <= 1   # 64 / 16 patches a side
