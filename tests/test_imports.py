"""Importing petbreeds changes nothing in the process: no warning filters, no thread settings (issue 25, item 6).
The command, the test kit and the notebooks set those up themselves, explicitly; the command still hides fastai's noise."""
import json
import os
import subprocess
import sys
from pathlib import Path

import petbreeds

PACKAGE = Path(petbreeds.__file__).parent
SHIPPED = sorted(p.stem for p in PACKAGE.glob('*.py') if p.stem not in ('__init__', '__main__', '_modidx', 'testing'))

def probe(code:str, env:dict) -> dict:
    "Run `code` in a fresh interpreter; it prints one JSON document, returned here"
    res = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])

def test_every_shipped_module_is_checked():
    assert {'core', 'data', 'learner', 'runs', 'cli', 'chapter'} <= set(SHIPPED), SHIPPED

IMPORT_PETBREEDS = '''import json, os, warnings
import torch   # torch's own import adds filters of its own: the baseline is taken after it
before = (list(warnings.filters), torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))
import petbreeds, petbreeds.core
after = (list(warnings.filters), torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))
print(json.dumps({'filters': before[0] == after[0], 'added': [str(f) for f in after[0] if f not in before[0]],
                  'threads': [before[1], after[1]], 'omp': [before[2], after[2]]}))'''

def test_importing_petbreeds_leaves_filters_and_threads_alone(subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k != 'OMP_NUM_THREADS'}
    got = probe(IMPORT_PETBREEDS, env)
    assert got['filters'], got['added']
    assert got['threads'][0] == got['threads'][1] and got['omp'] == [None, None], got

# Every shipped module, imported in a worker process as nbdev_test's are (IN_TEST set, a forked child), where the
# old core took a share of the cores on import. Third-party libraries add warning filters of their own on import
# (sympy, numpy, accelerate), so filters are told apart by who sets them: none may come from petbreeds' code.
IMPORT_EVERY_MODULE = '''import importlib, json, multiprocessing as mp, os, sys, warnings
MODULES = MODS
def check(_):
    import torch
    threads, omp, set_by_petbreeds = torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'), []
    def recorded(fn):
        def wrapper(*a, **kw):
            caller = sys._getframe(1).f_globals.get('__name__', '')
            if caller.split('.')[0] == 'petbreeds': set_by_petbreeds.append(f"{caller}: {fn.__name__}{a}")
            return fn(*a, **kw)
        return wrapper
    for name in ('filterwarnings', 'simplefilter', 'resetwarnings'): setattr(warnings, name, recorded(getattr(warnings, name)))
    torch.set_num_threads = recorded(torch.set_num_threads)
    failed = {}
    for m in MODULES:
        try: importlib.import_module('petbreeds.' + m)
        except ImportError as e: failed[m] = str(e)   # an optional extra not installed here
    return {'set_by_petbreeds': set_by_petbreeds, 'threads': [threads, torch.get_num_threads()],
            'omp': [omp, os.environ.get('OMP_NUM_THREADS')], 'failed': failed}
if __name__ == '__main__':
    print(json.dumps(mp.get_context('fork').Pool(1).map(check, [0])[0]))'''

def test_no_shipped_module_sets_filters_or_threads_on_import(subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k != 'OMP_NUM_THREADS'}
    got = probe(IMPORT_EVERY_MODULE.replace('MODS', repr(SHIPPED)), {**env, 'IN_TEST': '1'})
    assert got['set_by_petbreeds'] == [], got['set_by_petbreeds']
    assert got['threads'][0] == got['threads'][1], got['threads']
    assert got['omp'] == [None, None], got['omp']
    assert not set(got['failed']) & {'core', 'data', 'learner', 'runs', 'cli', 'chapter'}, got['failed']

def test_the_command_hides_fastais_jit_warning_and_the_library_does_not(subprocess_env, tmp_path):
    "`petbreeds check` imports fastai (through petbreeds.data): its torch.jit.script warning stays out of the user's way"
    missing = tmp_path/'no-such-folder'
    for cmd in ([str(Path(sys.executable).parent/'petbreeds')], [sys.executable, '-m', 'petbreeds']):
        res = subprocess.run([*cmd, 'check', str(missing)], env=subprocess_env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 2, res.stderr
        assert 'jit.script' not in res.stderr and 'FutureWarning' not in res.stderr, res.stderr
        assert res.stderr.strip().splitlines() == [f"petbreeds: error: '{missing}' is not a folder; give the folder that holds the images, e.g. .../oxford-iiit-pet/images"], res.stderr
    # the same import from a program of one's own shows fastai's warning: petbreeds leaves the program's filters alone
    env = {**subprocess_env, 'PYTHONWARNINGS': ''}
    res = subprocess.run([sys.executable, '-c', 'import petbreeds.data'], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert 'torch.jit.script' in res.stderr, res.stderr
