"""Real photos through every command (issue 27 item 3): `predict`, `explain`, `evaluate` on a folder of real photos answer
without error, upright, and honour a JPEG's EXIF orientation; `serve`, driven by a browser, shows a real photo's top class.

The model is the packaged ImageNet Lite0 network, not fine-tuned, restricted to ImageNet's cat and dog classes and written
as a petbreeds model file (`imagenet_pets_model`): its head is fastai's, set so that its logits are exactly the ImageNet head's
logits for those classes. So the answers mean something (the cat photo is a cat, darknet's dog a dog), and a photo read
sideways gets a different answer from the one read upright. The photos: scikit-image's `chelsea` (a tabby), darknet's
`dog.jpg` (a dog, a bicycle, a van; with camera EXIF) and `person.jpg` (a woman, a dog, a horse); see test_real_weights.py
for where darknet's come from. The EXIF copies: `dog.jpg`'s pixels turned a quarter, saved with its own camera EXIF and an
Orientation tag (6, or 8) that turns them back, so only a reader that honours the tag sees the upright dog.
"""
import json

import numpy as np
import pytest
from PIL import Image

from test_cli import petbreeds_cmd
from test_real_weights import CATS, DOGS, darknet_photo, missing

ARCH = 'tf_efficientnet_lite0'
CLASSES = [*CATS, *DOGS]   # ImageNet's cats and dogs: 123 classes

def imagenet_names(indices) -> list:
    "Short distinct names for ImageNet classes: each one's first synonym (timm's ImageNetInfo)"
    from timm.data import ImageNetInfo
    info, names = ImageNetInfo(), []
    for k in indices:
        synonyms = info.index_to_description(k).split(', ')
        names.append(next(s for s in synonyms if s not in names))
    return names

def imagenet_pets_model(dest, classes=CLASSES, arch=ARCH):
    """A petbreeds model file of `arch`'s packaged ImageNet network restricted to ImageNet's `classes`: fastai's head
    (concat pool, BatchNorm, Linear 2C->512, ReLU, BatchNorm, Linear 512->n) set to compute exactly W_c avg + b_c"""
    import torch
    from petbreeds.backbones import arch_stats, packaged_state_dict, packaged_weights, weights_origin
    from petbreeds.input_spec import InputSpec
    from petbreeds.model_file import model_meta, write_model_file
    if packaged_weights(arch) is None: missing(f"the packaged {arch} weights (petbreeds[weights]) make the real-photo model")
    names = imagenet_names(classes)
    order = sorted(range(len(classes)), key=names.__getitem__)   # as fastai orders a vocabulary, and so every petbreeds model (`evaluate` relies on it)
    classes, names = [classes[i] for i in order], [names[i] for i in order]
    state = packaged_state_dict(arch)
    W, b = state['classifier.weight'][classes], state['classifier.bias'][classes]
    n, c, hidden = len(classes), W.shape[1], 512   # fastai's default head width: what `evaluate`'s learner builds
    assert 2 * n + 1 <= hidden
    out = {f'0.model.{k}': v for k, v in state.items() if not k.startswith('classifier.')}
    def batchnorm(prefix, weight, bias):   # identity statistics: eval-mode BatchNorm is then x * weight + bias
        k = len(weight)
        out.update({f'{prefix}.weight': weight, f'{prefix}.bias': bias, f'{prefix}.running_mean': torch.zeros(k),
                    f'{prefix}.running_var': torch.full((k,), 1 - 1e-5), f'{prefix}.num_batches_tracked': torch.tensor(0)})
    batchnorm('1.2', torch.ones(2 * c), torch.zeros(2 * c))            # after [max pool, average pool]
    lin1 = torch.zeros(hidden, 2 * c)
    lin1[:n, c:], lin1[n:2 * n, c:] = W, -W                             # the logits and their negatives, from the average
    batchnorm('1.6', torch.cat([torch.ones(2 * n), torch.zeros(hidden - 2 * n)]), torch.zeros(hidden))
    out['1.6.bias'][2 * n] = 1.                                         # one unit that is always 1: the bias's carrier
    lin2 = torch.zeros(n, hidden)
    lin2[:, :n], lin2[:, n:2 * n], lin2[:, 2 * n] = torch.eye(n), -torch.eye(n), b   # relu(z) - relu(-z) + b
    out['1.4.weight'], out['1.8.weight'] = lin1, lin2
    # as a petbreeds run writes it: its items from the decode-once cache (`InputSpec.for_training`), which turns photos upright
    # (as `petbreeds.data.UprightImage` does where fastai decodes the items: fastai's own `PILImage` ignores the EXIF tag)
    spec = InputSpec.for_training(224, 224, cached=True, mean=arch_stats(arch)[0], std=arch_stats(arch)[1])
    return write_model_file(dest, out, model_meta(arch, names, spec, weights=weights_origin(arch)))

def turned(src, dest, orientation:int):
    "`src`'s pixels turned so that EXIF `orientation` (6 or 8) turns them back upright; its own EXIF kept, the tag added"
    img = Image.open(src)
    exif = img.getexif()
    assert exif.get(0x0112, 1) == 1, 'the original must be upright as stored'
    exif[0x0112] = orientation
    turn = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    img.transpose(turn).save(dest, exif=exif, quality=95, subsampling=0)
    return dest

def untagged(src, dest):
    "The pixels of `src` as stored, without their EXIF: what a reader that ignores the tag sees"
    Image.open(src).save(dest, quality=95, subsampling=0)
    return dest

@pytest.fixture(scope='module')
def env(tmp_path_factory):
    "Offline subprocesses with a private PETBREEDS_HOME, as conftest's `subprocess_env`, without its stand-in weights: this model needs none"
    from conftest import offline_env
    return offline_env(tmp_path_factory, standins=False)

@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return imagenet_pets_model(tmp_path_factory.mktemp('real_model')/'model.safetensors')

@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    "A folder of real photos, labelled a folder per class, and an EXIF-turned copy of the dog outside it"
    try: from skimage import data
    except ImportError: missing("scikit-image (a dev requirement) ships the cat photo: pip install -e '.[dev]'")
    d = tmp_path_factory.mktemp('real_photos')
    labelled = d/'labelled'
    for folder in ('tabby', 'malamute', 'Eskimo dog'): (labelled/folder).mkdir(parents=True)
    Image.fromarray(data.chelsea()).save(labelled/'tabby'/'chelsea.png')
    dog = labelled/'malamute'/'dog.jpg'
    dog.write_bytes(darknet_photo('dog.jpg').read_bytes())
    (labelled/'Eskimo dog'/'person.jpg').write_bytes(darknet_photo('person.jpg').read_bytes())
    turned(dog, labelled/'malamute'/'dog_turned6.jpg', 6)
    turned(dog, labelled/'malamute'/'dog_turned8.jpg', 8)
    (d/'elsewhere').mkdir()
    untagged(labelled/'malamute'/'dog_turned6.jpg', d/'elsewhere'/'dog_sideways.jpg')
    return {'folder': labelled, 'cat': labelled/'tabby'/'chelsea.png', 'dog': dog, 'person': labelled/'Eskimo dog'/'person.jpg',
            'turned': [labelled/'malamute'/'dog_turned6.jpg', labelled/'malamute'/'dog_turned8.jpg'], 'sideways': d/'elsewhere'/'dog_sideways.jpg'}

def test_the_model_file_is_the_imagenet_head(model, photos):
    "The hand-set fastai head computes the ImageNet classifier's logits for these classes (so the tests below test petbreeds, not the model)"
    import timm
    import torch
    from petbreeds.backbones import packaged_state_dict
    from petbreeds.input_spec import InputSpec, prepare_image
    from petbreeds.model_file import load_network
    net, meta = load_network(model)
    ref = timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(state_dict=packaged_state_dict(ARCH))).eval()
    x = torch.from_numpy(prepare_image(Image.open(photos['cat']), InputSpec.from_dict(meta['input'])))[None]
    index = dict(zip(imagenet_names(CLASSES), CLASSES))   # name -> ImageNet class
    assert sorted(meta['vocab']) == meta['vocab'] == sorted(index) and {'tabby', 'tiger cat', 'Egyptian cat', 'malamute'} <= set(index)
    with torch.no_grad(): got, want = net(x), ref(x)[:, [index[v] for v in meta['vocab']]]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

def _predict(model, paths, env) -> dict:
    res = petbreeds_cmd('predict', model, *paths, '--json', '--top-k', 5, '--backend', 'torch', '--precision', 'fp32', env=env)
    assert res.returncode == 0 and 'Traceback' not in res.stderr, res.stderr
    got = [json.loads(line) for line in res.stdout.splitlines()]
    return {r['image'].rpartition('/')[2]: {p['label']: p['probability'] for p in r['predictions']} for r in got}

def test_predict_on_real_photos_answers_upright(model, photos, env):
    "A folder of real photos: every one answered, the cat a cat and the dog a dog; the EXIF-turned copies as the upright dog, the untagged sideways pixels not"
    got = _predict(model, [photos['folder'], photos['sideways']], env)
    assert set(got) == {'chelsea.png', 'dog.jpg', 'person.jpg', 'dog_turned6.jpg', 'dog_turned8.jpg', 'dog_sideways.jpg'}, got
    top = {name: max(p, key=p.get) for name, p in got.items()}
    assert top['chelsea.png'] in {'tabby', 'tiger cat', 'Egyptian cat'}, got['chelsea.png']   # measured: Egyptian cat 0.39, tiger cat 0.32, tabby 0.17 (of all 1000)
    assert top['dog.jpg'] in {'German shepherd', 'malamute'}, got['dog.jpg']
    upright = got['dog.jpg']
    for name in ('dog_turned6.jpg', 'dog_turned8.jpg'):   # re-encoded at quality 95: the same classes, near the same probabilities
        assert list(got[name]) == list(upright), (name, got[name], upright)
        np.testing.assert_allclose(list(got[name].values()), list(upright.values()), atol=0.03, err_msg=name)
    sideways = got['dog_sideways.jpg']
    assert list(sideways)[:2] != list(upright)[:2] or abs(sideways[top['dog.jpg']] - upright[top['dog.jpg']]) > 0.1, (sideways, upright)   # the turn matters

def test_explain_on_real_photos_draws_them_upright(model, photos, env, tmp_path):
    from petbreeds.explain import TITLE_BAR
    paths = [photos['cat'], photos['dog'], photos['person'], *photos['turned']]
    res = petbreeds_cmd('explain', model, *paths, '--out', tmp_path, env=env)
    assert res.returncode == 0 and 'Traceback' not in res.stderr, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == len(paths), res.stdout
    label = {p.stem: next(l for l in lines if l.startswith(f'{p}: ')).split(': ', 1)[1].rsplit(' ', 3)[0] for p in paths}   # "PATH: LABEL P -> PNG"
    assert label['chelsea'] in {'tabby', 'tiger cat', 'Egyptian cat'} and label['dog'] in {'German shepherd', 'malamute'}, label
    pictures = {p.stem: Image.open(tmp_path/f'{p.stem}.gradcam.png').convert('RGB') for p in paths}
    for p in (photos['cat'], photos['dog'], photos['person']):   # the photo's own shape (its long side shrunk to 512), the title strip above
        w, h = Image.open(p).size
        scale = min(1, 512 / max(w, h))
        assert pictures[p.stem].size == (round(w * scale), round(h * scale) + TITLE_BAR), (p.name, pictures[p.stem].size)
    upright = np.asarray(pictures['dog'], dtype=float)
    for stem in ('dog_turned6', 'dog_turned8'):   # drawn upright, landscape as the dog, with the same class and the same heatmap
        assert label[stem] == label['dog'], (stem, label)
        assert pictures[stem].size == pictures['dog'].size, (stem, pictures[stem].size)
        assert np.abs(np.asarray(pictures[stem], dtype=float) - upright).mean() < 3, stem   # out of 255: JPEG noise only

def test_evaluate_on_a_folder_of_real_photos(model, photos, env, tmp_path):
    "`evaluate` on real photos labelled a folder per class: every image counted, and the EXIF-turned copies scored as the upright dog"
    res = petbreeds_cmd('evaluate', model, photos['folder'], '--labels', 'folders', '--suspects', 5, '--out', tmp_path/'ev', env=env)
    assert res.returncode == 0 and 'Traceback' not in res.stderr, res.stderr
    ev = json.loads((tmp_path/'ev'/'evaluation.json').read_text())
    assert ev['images'] == 5 and ev['split'] == 'all', ev
    assert {'confusion.png', 'calibration.png', 'top_losses.png', 'per_class.csv', 'suspects.csv'} <= {p.name for p in (tmp_path/'ev').iterdir()}
    import csv
    with open(tmp_path/'ev'/'suspects.csv', newline='') as f: rows = {r['file']: r for r in csv.DictReader(f)}
    assert rows['tabby/chelsea.png']['predicted'] in {'tabby', 'tiger cat', 'Egyptian cat'}, rows
    dog = rows['malamute/dog.jpg']
    assert dog['predicted'] in {'German shepherd', 'malamute'}, rows
    for name in ('malamute/dog_turned6.jpg', 'malamute/dog_turned8.jpg'):
        assert rows[name]['predicted'] == dog['predicted'] and abs(float(rows[name]['probability']) - float(dog['probability'])) < 0.03, (name, rows)

def test_browser_upload_of_a_real_photo_shows_its_top_class(model, photos, env, tmp_path):
    "`serve` on the real-photo model; chromium uploads the cat, then the EXIF-turned dog: the page shows each one's top class, the dog's as upright"
    import playwright.sync_api as playwright   # a dev requirement: never skipped
    from pathlib import Path
    from test_serve import BROWSER_ARGS, CALL_TIMEOUT, CHROMIUM, free_port, running, serve_cmd, top_label
    assert Path(CHROMIUM).exists(), f"the browser test needs Debian's chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"
    cat, dog = top_label(model, photos['cat']), top_label(model, photos['dog'])
    assert cat in {'tabby', 'tiger cat', 'Egyptian cat'} and dog in {'German shepherd', 'malamute'}, (cat, dog)
    (tmp_path/'cwd').mkdir(); (tmp_path/'tmp').mkdir()
    port = free_port(); url = f'http://127.0.0.1:{port}/'
    serve_env = {**env, 'TMPDIR': str(tmp_path/'tmp'), 'GRADIO_ANALYTICS_ENABLED': 'False'}
    with running(serve_cmd(model, port), url, env=serve_env, cwd=tmp_path/'cwd', log=tmp_path/'server.log'):
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, timeout=60_000)
            try:
                page = browser.new_page(viewport={'width': 1280, 'height': 1000})
                page.set_default_timeout(CALL_TIMEOUT * 1000)
                page.goto(url)
                upload = page.locator('#photo input[type=file]')
                label = page.locator('#breeds [data-testid=label-output-value]')
                upload.set_input_files(str(photos['cat']))
                playwright.expect(label).to_have_text(cat, timeout=CALL_TIMEOUT * 1000)
                playwright.expect(page.locator('#heatmap img')).to_be_visible(timeout=CALL_TIMEOUT * 1000)
                upload.set_input_files(str(photos['turned'][0]))
                playwright.expect(label).to_have_text(dog, timeout=CALL_TIMEOUT * 1000)
                page.screenshot(path=str(tmp_path/'serve_real.png'), full_page=True)
            finally: browser.close()
    assert 'Traceback' not in (tmp_path/'server.log').read_text()
