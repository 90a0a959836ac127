"""The house's floors, checked: each module is imported alone in a fresh interpreter and the modules it pulled in
are compared with what its floor allows. A lower layer never imports a higher one (README, "How it is built").

The floors, from the ground up (a module may import its own floor and those below):
  0  core                                      errors, device, precision, seeds, paths, breeds, architectures
  1  input_spec, options, backbones            the input contract (an image to the model's input); every training option; which architectures
  2  model_file                                the safetensors model file: its metadata, writing, reading, rebuilding the network
  3  inference                                 the fastai-free predictor (with the floors below it, what serving ships)
  3  demo                                      the demo's synthetic pets and stand-in weights
  4  cache, data, augment, explain             files -> presized, augmented batches; where a model looks (Grad-CAM)
  5  learner, tracking                         the learner, its schedule, saving the model; the run's loggers, resuming
  6  interpret, chapter                        reading a trained model; the chapter's lessons
  7  runs                                      one whole run
  8  serve                                     the web app on the predictor
  9  export                                    ONNX, int8, a Space folder
 10  cli                                       the command
  -  testing                                   the test kit: imported by nothing shipped
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

FLOOR = {'core': 0, 'input_spec': 1, 'options': 1, 'backbones': 1, 'model_file': 2, 'inference': 3, 'demo': 3, 'cache': 4, 'data': 4, 'explain': 4,
         'learner': 5, 'tracking': 5, 'interpret': 6, 'chapter': 6, 'runs': 7, 'serve': 8, 'export': 9, 'cli': 10}
OPTIONAL = {'distributed': 6, 'augment': 4}   # floors of modules that other work adds

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
    assert set(got['petbreeds']) <= {'core', 'input_spec', 'backbones', 'model_file', 'inference'}, got['petbreeds']
    assert not got['fastai'] and not got['torch'], "importing the predictor loads neither fastai nor torch"

def test_the_model_file_and_the_input_contract_import_no_fastai():
    for module in ('model_file', 'input_spec'):
        got = imported_by(module)
        assert not got['fastai'] and not got['torch'], (module, got)
        assert set(got['petbreeds']) <= {'core', 'input_spec', 'backbones', 'model_file'}, (module, got['petbreeds'])

def test_the_ground_floor_is_light():
    for module in ('core', 'input_spec', 'options'):
        got = imported_by(module)
        assert not got['fastai'] and not got['torch'], (module, got)

def test_the_web_app_stands_on_the_modules_a_space_ships():
    from petbreeds.export import SPACE_MODULES
    got = imported_by('serve')   # what a Hugging Face Space ships: no fastai, no training modules
    assert set(got['petbreeds']) <= set(SPACE_MODULES), got['petbreeds']
    assert not got['fastai']

def imports_in_source(module:str) -> set:
    "Every petbreeds module `module`'s source imports, at the top or inside a function (from Python's parser)"
    import ast
    found = set()
    for node in ast.walk(ast.parse((PACKAGE/f'{module}.py').read_text())):
        if isinstance(node, ast.ImportFrom):
            name = (node.module or '') if node.level else (node.module or '').removeprefix('petbreeds').lstrip('.')
            if node.level or (node.module or '').startswith('petbreeds'): found.add(name.split('.')[0])
    return found

def test_readers_of_the_model_file_go_through_it_not_through_the_predictor():
    for module in ('explain', 'interpret'):   # Grad-CAM and the evaluation's heatmaps: `load_network`, not the serving module
        assert 'inference' not in imports_in_source(module) and 'model_file' in imports_in_source(module), (module, imports_in_source(module))

def test_inference_imports_neither_export_nor_training_modules():
    assert not imports_in_source('inference') & {'export', 'learner', 'data', 'cache', 'augment', 'runs', 'interpret', 'explain', 'serve', 'cli'}, imports_in_source('inference')
    assert 'inference' not in imports_in_source('learner'), "training writes the model file through model_file, not the serving module"

def notebook_imports() -> dict:
    "For each numbered notebook in nbs/, in file-name order: (the module it exports, the petbreeds modules its code cells import)"
    import re
    found = {}
    for nb in sorted((PACKAGE.parent/'nbs').glob('[0-9]*.ipynb')):
        code = '\n'.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code')
        exported = re.search(r'^#\|\s*default_exp\s+(\S+)', code, flags=re.M)
        found[nb.stem] = (exported and exported.group(1), set(re.findall(r'^\s*(?:from|import)\s+petbreeds\.(\w+)', code, flags=re.M)))
    return found

def test_a_notebook_imports_only_modules_of_the_notebooks_before_it():
    "Read in file-name order, the notebooks never use a module before the notebook that explains it (exported code and tests alike)"
    found = notebook_imports()
    home = {module: name for name, (module, _) in found.items() if module}
    assert {'core', 'data', 'learner', 'cli'} <= set(home), home   # the parse found the notebooks' modules
    later = [(name, module, home[module]) for name, (own, used) in found.items() for module in used
             if module in home and module != own and home[module] > name]
    assert not later, "notebook imports a module from a later notebook (renumber, or move the cell): " + '; '.join(f'{n} uses {m} ({h})' for n, m, h in later)
