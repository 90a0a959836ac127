"""The pinned dependency set installs AND imports together, and the stand-in weights load the real way."""
import configparser
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parents[1]

def pins():
    "Every requirement in settings.ini that constrains a version"
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini')
    reqs = [Requirement(r) for key in ('requirements', 'dev_requirements') for r in cfg['DEFAULT'][key].split()]
    return [r for r in reqs if r.specifier]

@pytest.mark.parametrize('req', pins(), ids=str)
def test_installed_version_satisfies_the_pin(req):
    installed = metadata.version(req.name).split('+')[0]
    assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} drifted from '{req}' in settings.ini"

def test_nbdev_and_fastai_import_together():
    code = ("import nbdev, nbdev.test, execnb.nbio, fastcore.script; from fastcore.script import Param; "
            "import fastai.vision.all, torch, torchvision, petbreeds.cli; print(nbdev.__version__, fastai.__version__)")
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ['2.4.14', '2.8.7']

def test_torchvision_loads_standin_weights_offline(subprocess_env):
    "torchvision's own `weights=` path, in a fresh offline process, returns the stand-in tensors"
    code = ("import torch, torchvision; from petbreeds.testing import standin_file; "
            "m = torchvision.models.resnet34(weights='IMAGENET1K_V1'); "
            "saved = torch.load(standin_file('resnet34'), weights_only=True); "
            "assert all(torch.equal(m.state_dict()[k], v) for k, v in saved.items()); "
            "assert set(saved) == set(m.state_dict()); print('ok', len(saved))")
    from petbreeds.testing import use_standin_weights
    use_standin_weights('resnet34')
    res = subprocess.run([sys.executable, '-c', code], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith('ok ')

def test_standin_kit_never_overwrites_weights_it_did_not_make(tmp_path, monkeypatch):
    "Pointed at a real torch cache by mistake, the kit refuses rather than replace genuine ImageNet weights"
    from petbreeds.core import PetbreedsError
    from petbreeds.testing import standin_file, standin_weights
    monkeypatch.setenv('PETBREEDS_STANDIN_HOME', str(tmp_path))
    real = standin_file('resnet18')
    real.parent.mkdir(parents=True)
    real.write_bytes(b'pretend these are the real ImageNet weights')
    with pytest.raises(PetbreedsError, match='was not made by petbreeds'): standin_weights('resnet18')
    assert real.read_bytes() == b'pretend these are the real ImageNet weights'
