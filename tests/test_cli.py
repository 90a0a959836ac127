"""The `petbreeds` command end to end, as a user runs it: real subprocesses, offline."""
import subprocess
import sys
from pathlib import Path

import petbreeds

BIN = Path(sys.executable).parent

def petbreeds_cmd(*args, env, cwd=None, timeout=600):
    return subprocess.run([str(BIN/'petbreeds'), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)

def assert_one_line_error(res, *fragments):
    "Exit code 2, exactly one line on stderr naming the problem, no traceback"
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert 'Traceback' not in res.stderr
    for f in fragments: assert f in lines[0], (f, lines[0])

def test_console_script_and_python_m_agree(subprocess_env):
    a = petbreeds_cmd('--version', env=subprocess_env)
    b = subprocess.run([sys.executable, '-m', 'petbreeds', '--version'], env=subprocess_env, capture_output=True, text=True)
    assert a.returncode == b.returncode == 0
    assert a.stdout.strip() == b.stdout.strip() == f'petbreeds {petbreeds.__version__}'

def test_unknown_subcommand_is_one_line(subprocess_env):
    assert_one_line_error(petbreeds_cmd('fly', env=subprocess_env), "invalid choice: 'fly'", '--help')

def test_every_out_that_is_a_file_is_one_line_and_the_file_is_left_alone(subprocess_env, tmp_path):
    "Every subcommand's --out names a folder: a file there, or a path under one, is refused before any work"
    file = tmp_path/'notes.txt'
    file.write_text('mine')
    commands = (['train', '--demo'], ['lr-find', '--demo'], ['evaluate', tmp_path/'model.safetensors'],
                ['explain', tmp_path/'model.safetensors', tmp_path/'pug_1.jpg'])
    for cmd in commands:
        assert_one_line_error(petbreeds_cmd(*cmd, '--out', file, env=subprocess_env, cwd=tmp_path),
                              f"petbreeds {cmd[0]}: error: argument --out: '{file}' is a file, not a", 'folder: name a new folder')
        assert_one_line_error(petbreeds_cmd(*cmd, '--out', file/'run', env=subprocess_env, cwd=tmp_path),
                              f"'{file}', which is a file")
    assert file.read_text() == 'mine'
    assert [p.name for p in tmp_path.iterdir() if p.name != 'petbreeds_home'] == ['notes.txt']   # and nothing was written beside it

# Every option is checked before anything is written: a refused option leaves no run folder, lock or cache.
import pytest  # noqa: E402

from petbreeds.testing import synthetic_pets  # noqa: E402

@pytest.fixture(scope='module')
def kit(tmp_path_factory):
    return synthetic_pets(tmp_path_factory.mktemp('kit')/'images', per_class=1, size=32)   # 37 images

def _own_home(env, tmp_path): return {**env, 'PETBREEDS_HOME': str(tmp_path/'home')}   # so "no cache" can be seen

def _nothing_written(tmp_path):
    assert not (tmp_path/'R').exists(), sorted(p.name for p in (tmp_path/'R').iterdir())
    assert not (tmp_path/'home'/'cache').exists()

def test_a_size_below_the_floor_leaves_no_run_folder(kit, subprocess_env, tmp_path):
    env = _own_home(subprocess_env, tmp_path)
    for _ in range(2):   # and the same command again says the same, not "already holds files"
        res = petbreeds_cmd('train', kit, '--size', '4', '--out', tmp_path/'R', env=env, cwd=tmp_path)
        assert_one_line_error(res, 'argument --size: expected a whole number of pixels from 8 to 4096, got 4')
        _nothing_written(tmp_path)

@pytest.mark.parametrize('args,fragment', [
    (['--epochs', '-1'], 'argument --epochs: expected 0 or more, got -1'),                          # count
    (['--seed', '1.5'], "argument --seed: expected a whole number, got '1.5'"),                     # count: whole numbers only
    (['--presize', '5000'], 'argument --presize: expected a whole number of pixels from 8 to 4096'),  # pixels: the ceiling
    (['--bs', '1'], 'argument --bs: expected 2 or more'),                                             # batch
    (['--lr', '0'], 'argument --lr: expected a number above 0'),                                      # positive
    (['--valid-pct', '1'], 'argument --valid-pct: expected a number between 0 and 1'),                # fraction
    (['--min-scale', '1.5'], 'argument --min-scale: expected a number above 0 and at most 1'),        # fraction_or_one
    (['--label-smoothing', '1'], 'expected a number from 0 up to, not including, 1'),                 # smoothing
    (['--cutmix', '-1'], 'argument --cutmix: expected a number 0 or more'),                           # non_negative
    (['--precision', 'fp8'], "unknown precision 'fp8'"),                                              # a choice
    (['--recipe', 'fast'], "unknown recipe 'fast'"),
    (['--sizes', '128,64'], 'argument --sizes: expected sizes in pixels, smallest first'),            # sizes
    (['--sizes', '4,64'], 'each from 8 to 4096'),
    (['--sizes', '64,128', '--presize', '96'], 'size 128 in --sizes is larger than the presize 96'),
    (['--size', '128', '--presize', '96'], 'presize 96 is smaller than size 128'),                    # options that don't fit together
    (['--mixup', '0.4', '--cutmix', '1'], 'use one at a time'),
    (['--epochs', '0', '--freeze-epochs', '0'], 'nothing to train'),
    (['--arch', 'resnet35'], "unknown architecture 'resnet35'"),                                      # the machine's and the disk's (check_config)
    (['--weights', 'no/such/file.pth'], 'does not exist'),
    (['--precision', 'fp16', '--device', 'cpu'], 'where petbreeds trains in fp32'),
])
def test_each_kind_of_bad_option_leaves_no_run_folder(kit, args, fragment, subprocess_env, tmp_path):
    res = petbreeds_cmd('train', kit, *args, '--out', tmp_path/'R', env=_own_home(subprocess_env, tmp_path), cwd=tmp_path)
    assert_one_line_error(res, fragment)
    _nothing_written(tmp_path)

def test_lr_find_refuses_the_same_way(kit, subprocess_env, tmp_path):
    res = petbreeds_cmd('lr-find', kit, '--size', '128', '--presize', '96', '--out', tmp_path/'R', env=_own_home(subprocess_env, tmp_path), cwd=tmp_path)
    assert_one_line_error(res, 'presize 96 is smaller than size 128')
    _nothing_written(tmp_path)
    few = petbreeds_cmd('lr-find', kit, '--steps', '22', '--out', tmp_path/'R', env=_own_home(subprocess_env, tmp_path), cwd=tmp_path)
    assert_one_line_error(few, 'argument --steps: expected 23 or more', 'got 22')   # fastai's suggestions need 23
    _nothing_written(tmp_path)

def test_a_batch_the_images_cannot_fill_is_refused_before_the_cache_and_can_be_run_again(kit, subprocess_env, tmp_path):
    env = _own_home(subprocess_env, tmp_path)
    for _ in range(2):   # the folder it claimed holds nothing but its lock, so the same folder is taken again
        res = petbreeds_cmd('train', kit, '--bs', '64', '--out', tmp_path/'R', env=env, cwd=tmp_path)
        assert_one_line_error(res, 'batch size 64 is larger than the 30 training images')
        assert not (tmp_path/'home'/'cache').exists()
        assert [p.name for p in (tmp_path/'R').iterdir()] == ['.lock']
