"""Test the tester: nbdev_test reports a notebook whose test cell fails as failed."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]

def notebook(*cells):
    return {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': f'c{i}', 'metadata': {}, 'outputs': [],
                       'source': src} for i, src in enumerate(cells)],
            'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
            'nbformat': 4, 'nbformat_minor': 5}

def run_nbdev_test(tmp_path, *cells):
    shutil.copy(ROOT/'settings.ini', tmp_path/'settings.ini')
    (tmp_path/'nbs').mkdir()
    (tmp_path/'nbs'/'check.ipynb').write_text(json.dumps(notebook(*cells)))
    nbdev_test = Path(sys.executable).parent/'nbdev_test'
    return subprocess.run([str(nbdev_test), '--path', 'nbs/check.ipynb'], cwd=tmp_path, capture_output=True, text=True, timeout=300)

def test_a_failing_test_cell_fails_nbdev_test(tmp_path):
    res = run_nbdev_test(tmp_path, 'from fastcore.test import test_eq', 'test_eq(1 + 1, 3)')
    assert res.returncode != 0
    assert 'check.ipynb' in res.stderr + res.stdout

def test_a_passing_notebook_passes_and_flagged_cells_are_skipped(tmp_path):
    res = run_nbdev_test(tmp_path, 'from fastcore.test import test_eq', 'test_eq(1 + 1, 2)', '#| slow\nraise Exception("slow cells are skipped")')
    assert res.returncode == 0, res.stderr
