"""Shared set-up for the pytest suite: offline, a private data home, and stand-in weights."""
import os
import tempfile
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import offline  # noqa: E402

offline.install()
# Two test files at a time (`pytest -n 2`): each worker, and every process it starts, gets its share of the cores, as
# nbdev_test's notebooks do (`petbreeds.core`): torch's threads, more of them than cores, spin and wait on each other
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if _WORKERS > 1 and 'OMP_NUM_THREADS' not in os.environ:
    os.environ['OMP_NUM_THREADS'] = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))
    if 'torch' in sys.modules: sys.modules['torch'].set_num_threads(int(os.environ['OMP_NUM_THREADS']))
# One cache of exported ONNX files and compiled OpenVINO models for the whole session (`petbreeds.inference.cache_folder`): each test
# has its own PETBREEDS_HOME, but the same model file needs exporting only once
_OWN_CACHE = None if os.environ.get('PETBREEDS_CACHE') else tempfile.mkdtemp(prefix='petbreeds-test-cache-')
if _OWN_CACHE: os.environ['PETBREEDS_CACHE'] = _OWN_CACHE

# The demo on the fast resnet18 stand-ins: for tests of the machinery (runs, resuming, serving, errors), which need a model, not
# real features. `petbreeds train --demo` itself starts from the real packaged Lite0 weights where installed (as in CI): the tests
# that are about the demo a user runs (tests/test_train.py's demo_run, tests/test_real_weights.py) use plain --demo.
STANDIN_DEMO = ('--demo', '--arch', 'resnet18')

def offline_env(tmp_path_factory, standins:bool=True) -> dict:
    "Environment for subprocesses: offline too, a private PETBREEDS_HOME and, with `standins`, the stand-in weights' TORCH_HOME"
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(TESTS/'offline_site')] + [p for p in [env.get('PYTHONPATH')] if p])
    env['PETBREEDS_HOME'] = str(tmp_path_factory.mktemp('petbreeds_home'))
    if standins:
        from petbreeds.testing import use_standin_weights
        env['TORCH_HOME'] = str(use_standin_weights('resnet18'))
    env['PYTHONUNBUFFERED'] = '1'
    env.pop('CUDA_VISIBLE_DEVICES', None)
    return env

@pytest.fixture(scope='session')
def subprocess_env(tmp_path_factory):
    "Environment for subprocesses: offline too, a private PETBREEDS_HOME, stand-in weights' TORCH_HOME"
    return offline_env(tmp_path_factory)

@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    "Each test gets its own PETBREEDS_HOME, so nothing leaks into ~/.fastai or between tests"
    monkeypatch.setenv('PETBREEDS_HOME', str(tmp_path/'petbreeds_home'))

def pytest_configure(config):
    config.addinivalue_line('markers', 'hostile: an input crafted or damaged to break petbreeds (`pytest -m hostile` runs them all)')
    # fastai's import calls torch.jit.script, which torch 2.14 deprecates: noise, not a finding
    config.addinivalue_line('filterwarnings', 'ignore:`torch.jit.script` is deprecated:FutureWarning')
    # and its ColReader's pandas deprecation: the two that petbreeds' command and test kit silence (importing petbreeds doesn't)
    config.addinivalue_line('filterwarnings', r'ignore:Series\.__getitem__ treating keys as positions:FutureWarning:fastai\.')

def pytest_unconfigure(config):
    if _OWN_CACHE:
        import shutil
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
