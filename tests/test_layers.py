"""The house's floors, checked: each module is imported alone in a fresh interpreter and the modules it pulled in
are compared with what its floor allows. A lower layer never imports a higher one (README, "How it is built").

The floors, from the ground up (a module may import its own floor and those below):
  0  core                                      errors, device, precision, seeds, paths, breeds, architectures
  1  input_spec, options, backbones            how an image becomes the input; every training option; which architectures
  2  inference                                 the model file and the fastai-free predictor (a leaf: serving ships it alone)
  2  demo                                      the demo's synthetic pets and stand-in weights
  3  cache, data, explain, tracking            files -> presized batches; where a model looks (Grad-CAM); the run's loggers
  4  learner                                   the learner, its schedule, checkpoints, saving the model
  5  interpret, chapter                        reading a trained model; the chapter's lessons
  6  runs                                      one whole run
  7  cli                                       the command
  -  testing                                   the test kit: imported by nothing shipped
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

FLOOR = {'core': 0, 'input_spec': 1, 'options': 1, 'backbones': 1, 'inference': 2, 'demo': 2, 'cache': 3, 'data': 3, 'explain': 3, 'tracking': 3, 'learner': 4,
         'interpret': 5, 'chapter': 5, 'runs': 6, 'cli': 7}
OPTIONAL = {'serve': 7, 'distributed': 5, 'augment': 3}   # floors of modules that other work adds

def imported_by(module:str) -> dict:
    "The petbreeds modules and the heavy libraries in sys.modules after importing `module` alone"
    code = (f"import sys, json, importlib; importlib.import_module('petbreeds.{module}'); "
            "mods = sorted(m.split('.')[1] for m in sys.modules if m.startswith('petbreeds.') and m.count('.') == 1); "
            "print(json.dumps({'petbreeds': mods, 'fastai': 'fastai' in sys.modules, 'torch': 'torch' in sys.modules}))")
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])

PACKAGE = Path(__file__).parents[1]/'petbreeds'
PRESENT = {p.stem for p in PACKAGE.glob('*.py') if not p.stem.startswith('_')}
FLOORS = {**FLOOR, **{m: f for m, f in OPTIONAL.items() if m in PRESENT}}

def test_every_module_has_a_floor():
    unknown = PRESENT - set(FLOORS) - {'testing'}
    assert not unknown, f"give these modules a floor in tests/test_layers.py and README: {sorted(unknown)}"

@pytest.mark.parametrize('module', sorted(FLOORS))
def test_no_module_imports_a_higher_floor_or_the_test_kit(module):
    floors = FLOORS
    got = imported_by(module)
    above = [m for m in got['petbreeds'] if m in floors and floors[m] > floors[module]]
    assert not above, f"petbreeds.{module} (floor {floors[module]}) imports higher floors: {above}"
    assert 'testing' not in got['petbreeds'], f"petbreeds.{module} imports the test kit"

def test_core_imports_no_other_petbreeds_module():
    assert imported_by('core')['petbreeds'] == ['core']

def test_serving_is_a_leaf_without_fastai_or_training_modules():
    got = imported_by('inference')
    assert set(got['petbreeds']) <= {'core', 'input_spec', 'backbones', 'inference'}, got['petbreeds']
    assert not got['fastai'] and not got['torch'], "importing the predictor loads neither fastai nor torch"

def test_the_ground_floor_is_light():
    for module in ('core', 'input_spec', 'options'):
        got = imported_by(module)
        assert not got['fastai'] and not got['torch'], (module, got)

def test_the_web_app_stands_on_the_predictor_alone():
    got = imported_by('serve')   # what a Hugging Face Space ships: no fastai, no training modules
    assert set(got['petbreeds']) <= {'core', 'input_spec', 'backbones', 'inference', 'serve'}, got['petbreeds']
    assert not got['fastai']
