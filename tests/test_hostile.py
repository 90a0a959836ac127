"""Inputs that have broken petbreeds before, through every command they reach: file names that are not UTF-8,
16-bit pictures, phone photos stored sideways, images over the pixel limit, splits and batches too small to train.

Each test asserts what the user sees (one clear line, the exit code) and that their folder is unchanged.
The other hostile groups live beside the code they attack (archives in test_data, model files and pickles in
test_predict, runs and kills in test_train, test_resume and test_distributed); all carry the `hostile` mark:
`pytest -m hostile` runs the whole suite.
"""
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from petbreeds.core import PetbreedsError
from petbreeds.testing import synthetic_pets
from test_cli import assert_one_line_error, petbreeds_cmd
from test_data import snapshot

pytestmark = pytest.mark.hostile
SMALL = ('--arch', 'resnet18', '--size', '64', '--presize', '96', '--bs', '16')   # the demo's scale, on a folder

@pytest.fixture(scope='module')
def kit(tmp_path_factory):
    return synthetic_pets(tmp_path_factory.mktemp('kit')/'images', per_class=2, size=96)

def test_names_that_are_not_utf8_work_in_every_command(kit, subprocess_env, tmp_path):
    "A folder, a file and a run folder named in Latin-1 bytes; stdout as strict as a UTF-8 terminal's"
    images = tmp_path/os.fsdecode(b'fotos-\xe9t\xe9')
    shutil.copytree(kit, images)
    odd = images/os.fsdecode(b'sub\xfe')
    odd.mkdir(); shutil.copy(images/'Bengal_1.jpg', odd/'Bengal_77.jpg')
    before = snapshot(images)
    env = {**subprocess_env, 'PYTHONIOENCODING': 'utf-8:strict', 'LC_ALL': 'C.UTF-8'}
    run = tmp_path/os.fsdecode(b'run-\xff')
    steps = {
        'check': ('check', images),
        'train': ('train', images, *SMALL, '--epochs', '0', '--freeze-epochs', '1', '--out', run),
        'evaluate': ('evaluate', run/'model.safetensors', images, '--out', tmp_path/'eval'),
        'predict': ('predict', run/'model.safetensors', odd/'Bengal_77.jpg', images/'pug_1.jpg'),
        'export': ('export', run/'model.safetensors', '--onnx', run/'model.onnx'),
        'predict-onnx': ('predict', run/'model.onnx', odd/'Bengal_77.jpg'),
        'lr-find': ('lr-find', images, *SMALL, '--bs', '8', '--steps', '30', '--out', tmp_path/os.fsdecode(b'lr-\xff')),   # few, small steps
    }
    for name, args in steps.items():
        res = petbreeds_cmd(*args, env=env, cwd=tmp_path)
        assert res.returncode in (0, 1) and 'Traceback' not in res.stderr, (name, res.stderr[-2000:])
        if name == 'check': assert 'sub\\udcfe/Bengal_77.jpg' in res.stdout, res.stdout   # named, escaped, not lost
        if name.startswith('predict'): assert 'sub\\udcfe/Bengal_77.jpg: ' in res.stdout, res.stdout
    assert json.loads((run/'metrics.json').read_text())['epochs'] == 1
    assert (run/'report.html').exists() and (tmp_path/'eval'/'evaluation.json').exists()
    assert snapshot(images) == before

def _sixteen_bit(src, dest):
    "`src` as a 16-bit greyscale PNG (as scanners and some cameras write), and its 8-bit twin"
    grey = np.asarray(Image.open(src).convert('L'), np.uint16)
    Image.fromarray(grey * 257).save(dest)   # 0..255 -> 0..65535: the same picture, deeper
    assert Image.open(dest).mode.startswith('I')
    return Image.fromarray(grey.astype(np.uint8)).convert('RGB')

def test_a_16_bit_png_is_the_same_picture_in_training_and_prediction(kit, tmp_path, subprocess_env):
    from petbreeds.cache import PresizeCache
    from petbreeds.input_spec import open_image
    png = tmp_path/'images'/'Bengal_90.png'; png.parent.mkdir()
    twin = _sixteen_bit(kit/'Bengal_1.jpg', png)
    got = np.asarray(open_image(png), np.int16)
    assert np.abs(got - np.asarray(twin, np.int16)).max() <= 1, "predict sees the picture, not a white page"
    cache = PresizeCache.open([png], 64, home=tmp_path/'cache', progress=False)
    seen = cache.array(png).astype(np.int16)
    assert abs(seen.mean() - np.asarray(twin.resize((64, 64))).mean()) < 2 and seen.mean() < 200
    res = petbreeds_cmd('check', png.parent, env=subprocess_env)
    assert 'unreadable' not in res.stdout and 'images: 1' in res.stdout.replace('image files', 'images'), res.stdout

def _sideways(upright:Image.Image, path):
    "Save `upright` as a phone does: pixels turned a quarter, and an EXIF tag saying to turn them back"
    exif = Image.Exif(); exif[0x0112] = 6   # "rotate 90 degrees clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, 'JPEG', quality=95, exif=exif)

def test_a_phone_photo_stored_sideways_is_upright_everywhere(tmp_path, subprocess_env):
    from petbreeds.cache import PresizeCache
    from petbreeds.input_spec import open_image
    wide = Image.new('RGB', (120, 60), (20, 20, 20)); wide.paste((230, 30, 30), (0, 0, 60, 60))   # red on the left half
    _sideways(wide, tmp_path/'Bengal_5.jpg')
    stored = Image.open(tmp_path/'Bengal_5.jpg')
    assert stored.size == (60, 120), "the file really is stored sideways"
    for name, img in (('predict', open_image(tmp_path/'Bengal_5.jpg')),
                      ('cache', Image.fromarray(np.array(PresizeCache.open([tmp_path/'Bengal_5.jpg'], 30, home=tmp_path/'c', progress=False).array(tmp_path/'Bengal_5.jpg'))))):
        a = np.asarray(img, np.float32)
        assert a.shape[1] == 2 * a.shape[0], (name, a.shape)   # wide, as the photographer held the phone
        left, right = a[:, : a.shape[1] // 3].mean((0, 1)), a[:, -a.shape[1] // 3:].mean((0, 1))
        assert left[0] > 150 and right[0] < 80, (name, left, right)

def test_one_pixel_limit_for_every_command(tmp_path, monkeypatch):
    "Between Pillow's limit and twice it Pillow only warns: check, training and prediction all refuse from the limit on"
    from petbreeds.data import get_pet_images, image_problem
    from petbreeds.input_spec import open_image
    folder = tmp_path/'images'; folder.mkdir()
    Image.new('RGB', (80, 80), 'grey').save(folder/'Bengal_1.png')
    Image.new('RGB', (40, 40), 'grey').save(folder/'Bengal_2.png')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 5000)   # 80x80 = 6400: over the limit, under twice it
    assert image_problem(folder/'Bengal_1.png') == 'too large to decode safely'
    with pytest.warns(Warning, match='Bengal_1.png \\(too large to decode safely\\)'):
        assert [p.name for p in get_pet_images(folder)] == ['Bengal_2.png']
    with pytest.raises(PetbreedsError, match='more pixels than the safe limit of 5000'): open_image(folder/'Bengal_1.png')
    with pytest.raises(PetbreedsError, match='more pixels than the safe limit'): open_image((folder/'Bengal_1.png').read_bytes())
    assert open_image(folder/'Bengal_2.png').size == (40, 40)

@pytest.mark.parametrize('args,fragment', [
    (('--bs', '1'), "argument --bs: expected 2 or more (the new head's BatchNorm needs two images a batch to train), got 1"),
    (('--valid-pct', '0.001'), 'is no image at all'),
    (('--valid-pct', '0.99'), 'are left for training'),
])
def test_splits_and_batches_too_small_to_train_are_one_line(kit, subprocess_env, tmp_path, args, fragment):
    before = snapshot(kit)
    res = petbreeds_cmd('train', kit, *SMALL, *args, '--out', tmp_path/'run', env=subprocess_env, cwd=tmp_path)
    assert_one_line_error(res, fragment)
    assert not (tmp_path/'run'/'model.safetensors').exists() and snapshot(kit) == before
