"""A training run's folder under stress: killed at any moment and resumed, one owner at a time, never overwritten by
mistake, and a run that diverges. Apart from tests/test_train.py so that `pytest -n 2 --dist loadfile` can give the two
halves to the two workers (a file stays in one worker)."""
import csv
import json
import shutil
import signal
import subprocess
import time

import pytest
from conftest import STANDIN_DEMO
from petbreeds.runs import DONE

from test_cli import BIN, assert_one_line_error, petbreeds_cmd

@pytest.mark.hostile
def test_a_killed_run_resumes_to_the_full_number_of_epochs(subprocess_env, tmp_path):
    run = tmp_path/'run'
    cmd = [str(BIN/'petbreeds'), 'train', *STANDIN_DEMO, '--epochs', '3', '--out', str(run)]
    proc = subprocess.Popen(cmd, env=subprocess_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = run/'checkpoints'/'progress.json'
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and json.loads(progress.read_text())['stage'] == 1: break   # an unfrozen epoch is done
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL); proc.wait()
    with open(run/'history.csv') as f: before = len(list(csv.DictReader(f)))
    assert 2 <= before < 4
    assert not (run/'model.safetensors').exists()
    res = petbreeds_cmd('train', '--resume', '--out', 'run', env=subprocess_env, cwd=tmp_path)   # relative, as runs/... is
    assert res.returncode == 0, res.stderr
    with open(run/'history.csv') as f: rows = list(csv.DictReader(f))
    assert [int(r['epoch']) for r in rows] == [1, 2, 3, 4]
    assert [r['stage'] for r in rows] == ['frozen', 'unfrozen', 'unfrozen', 'unfrozen']
    assert json.loads((run/'metrics.json').read_text())['epochs'] == 4
    assert (run/'model.safetensors').exists()
    again = petbreeds_cmd('train', '--resume', '--out', run, '--epochs', '5', env=subprocess_env, cwd=tmp_path)
    assert_one_line_error(again, '--resume continues the run with its saved options: drop --epochs')
    assert_one_line_error(petbreeds_cmd('train', '--resume', '--out', run, env=subprocess_env, cwd=tmp_path), 'is complete')

def _start_demo(run, env, cwd, *extra):
    "A demo training run in the background, and the moment its config.json (written once the folder is claimed) appears"
    proc = subprocess.Popen([str(BIN/'petbreeds'), 'train', *STANDIN_DEMO, '--out', str(run), *map(str, extra)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (run/'config.json').exists(): time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be caught in the act"
    return proc

@pytest.mark.hostile
def test_a_run_folder_has_one_owner_at_a_time(subprocess_env, tmp_path):
    run = tmp_path/'run'
    first = _start_demo(run, subprocess_env, tmp_path, '--epochs', 1)
    try:
        second = petbreeds_cmd('train', '--resume', '--out', run, env=subprocess_env, cwd=tmp_path)
        fresh = petbreeds_cmd('train', *STANDIN_DEMO, '--out', run, env=subprocess_env, cwd=tmp_path)
        out, err = first.communicate(timeout=600)
    finally: first.kill()
    assert_one_line_error(second, f"another petbreeds process is training in '{run}'")
    assert_one_line_error(fresh, 'already holds files')
    assert first.returncode == 0, err
    with open(run/'history.csv') as f: assert [r['epoch'] for r in csv.DictReader(f)] == ['1', '2']   # one writer

@pytest.mark.hostile
def test_a_run_killed_before_its_first_checkpoint_starts_again_on_resume(subprocess_env, tmp_path):
    run = tmp_path/'run'
    proc = _start_demo(run, subprocess_env, tmp_path, '--epochs', 1)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (run/'checkpoints'/'progress.json').exists()
    assert_one_line_error(petbreeds_cmd('train', *STANDIN_DEMO, '--out', run, env=subprocess_env, cwd=tmp_path), 'already holds files')
    res = petbreeds_cmd('train', '--resume', '--out', 'run', env=subprocess_env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert 'has no finished epoch: starting it again, with its saved options' in res.stderr
    assert json.loads((run/'metrics.json').read_text())['epochs'] == 2 and (run/'model.safetensors').exists()

@pytest.mark.hostile
def test_out_naming_a_file_is_one_line(subprocess_env, tmp_path):
    (tmp_path/'notes.txt').write_text('mine')
    assert_one_line_error(petbreeds_cmd('train', *STANDIN_DEMO, '--out', tmp_path/'notes.txt', env=subprocess_env, cwd=tmp_path), 'is a file, not a run folder')
    assert (tmp_path/'notes.txt').read_text() == 'mine'

@pytest.mark.hostile
def test_a_diverging_run_stops_with_one_line_and_no_model(subprocess_env, tmp_path):
    res = petbreeds_cmd('train', *STANDIN_DEMO, '--lr', '1e6', '--epochs', 1, '--out', tmp_path/'run', env=subprocess_env, cwd=tmp_path)
    assert res.returncode == 2 and 'Traceback' not in res.stderr, res.stderr
    demo, weights, error = res.stderr.strip().splitlines()   # the demo's two notices as it started, then the one error line
    assert demo.startswith('petbreeds: demo: ') and weights.startswith('petbreeds: stand-in weights for resnet18')
    assert error.startswith('petbreeds: error: the training loss became NaN or infinite at a learning rate of 1e+06')
    assert 'e.g. 100000' in error
    assert not (tmp_path/'run'/'model.safetensors').exists() and not (tmp_path/'run'/'metrics.json').exists()

def _kill_when(run, env, cwd, moment, timeout=600):
    "Start a demo run of two epochs into `run` and SIGKILL it as soon as `moment()` is true; True if it was caught alive"
    proc = _start_demo(run, env, cwd, '--epochs', 1)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not moment(): time.sleep(0.002)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL); proc.communicate()
    return alive

def _finishes_on_resume(run, env, cwd):
    res = petbreeds_cmd('train', '--resume', '--out', run, env=env, cwd=cwd)
    assert res.returncode == 0 and 'Traceback' not in res.stderr, res.stderr[-3000:]
    with open(run/'history.csv') as f: rows = list(csv.DictReader(f))
    assert [(r['epoch'], r['stage']) for r in rows] == [('1', 'frozen'), ('2', 'unfrozen')], rows
    assert json.loads((run/'metrics.json').read_text())['epochs'] == 2
    from petbreeds.model_file import read_model_meta
    assert read_model_meta(run/'model.safetensors')['arch'] == 'resnet18'
    assert not list(run.rglob('*.tmp')) and not list(run.rglob('*.tmp.pth')), "no half-written file is left behind"

@pytest.mark.hostile
@pytest.mark.parametrize('moment', ['saving a checkpoint', 'saving the model', 'at a random time'])
def test_a_run_killed_at_any_moment_finishes_with_resume(subprocess_env, tmp_path, moment):
    "SIGKILL while a checkpoint is half-written, as the model file is written (before metrics and report), or at a random point"
    import random
    run = tmp_path/'run'
    if moment == 'at a random time':
        seed = random.randrange(10**6)
        draw, limit = random.Random(seed), 20.   # a demo run of two epochs takes about 10-40 s, by machine and precision
        for _ in range(4):
            delay, start = draw.uniform(0, limit), time.time()
            caught = _kill_when(run, subprocess_env, tmp_path, lambda: time.time() - start > delay)
            if caught and not (run/DONE).exists(): break   # killed after `metrics.json` (on its way out) is a finished run
            limit = 0.9 * (time.time() - start)   # it finished first: this machine is faster; draw within its run time
            shutil.rmtree(run)
        else: raise AssertionError(f"no run was caught alive (seed {seed})")
    else:
        files = [run/'checkpoints'/'last.tmp.pth'] if moment == 'saving a checkpoint' else [run/'model.safetensors.tmp', run/'model.safetensors']
        assert _kill_when(run, subprocess_env, tmp_path, lambda: any(f.exists() for f in files)), f"the run ended before {moment}"
    _finishes_on_resume(run, subprocess_env, tmp_path)
