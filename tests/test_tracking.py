"""Experiment tracking end to end (`petbreeds.tracking`, `petbreeds runs`): a real `mlflow server` over SQLite on a
loopback port receives tiny runs, read back with `MlflowClient`; TensorBoard's event files read back with its own
`EventAccumulator`; a killed and resumed run keeps one MLflow run; a server that stops mid-run is a warning; and
`petbreeds runs` tells finished, interrupted and diverged runs apart."""
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_cli import BIN, petbreeds_cmd

# a tiny run: 74 kit images at 32 px, random weights (nothing to load), one frozen epoch and one unfrozen
TINY = ['--arch', 'resnet18', '--weights', 'none', '--size', 32, '--presize', 40, '--bs', 16, '--freeze-epochs', 1, '--epochs', 1, '--num-workers', 0]

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def start_mlflow_server(folder:Path) -> tuple:
    "A real `mlflow server` over SQLite in `folder`, on a free loopback port, answering: (process, its URI)"
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN/'mlflow'), 'server', '--backend-store-uri', f"sqlite:///{folder/'mlflow.db'}", '--artifacts-destination', str(folder/'artifacts'),
           '--host', '127.0.0.1', '--port', str(port), '--workers', '1']
    log = open(folder/'server.log', 'w')
    proc = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)   # its own group: its workers stop with it
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200: return proc, uri
        except OSError: time.sleep(0.3)
    stop_server(proc)
    raise AssertionError(f"mlflow server did not start: {(folder/'server.log').read_text()[-2000:]}")

def stop_server(proc):
    "Stop the server we started, by its process group (its id), and wait for it"
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(timeout=3)   # uvicorn waits for open connections to close; the SQLite file has each request committed
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()

@pytest.fixture(scope='module')
def server(tmp_path_factory):
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp('mlflow'))
    yield uri
    stop_server(proc)

@pytest.fixture(scope='module')
def work(tmp_path_factory, subprocess_env):
    "A folder with the tiny kit images, and the environment the commands run in"
    from petbreeds.testing import synthetic_pets
    d = tmp_path_factory.mktemp('tracking')
    synthetic_pets(d/'images', per_class=2, size=48)
    return d, {**subprocess_env, 'PETBREEDS_HOME': str(d/'home')}

def client_for(uri):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=uri)

def rows(f:Path) -> list:
    with open(f, newline='') as fh: return list(csv.DictReader(fh))

@pytest.fixture(scope='module')
def tracked(work, server):
    "One tiny run logged to the server and to TensorBoard"
    d, env = work
    res = petbreeds_cmd('train', d/'images', *TINY, '--log', 'tensorboard', '--log', 'mlflow', '--out', d/'runs'/'tracked',
                        env={**env, 'MLFLOW_TRACKING_URI': server}, cwd=d)
    assert res.returncode == 0, res.stderr[-3000:]
    return d/'runs'/'tracked', res

def test_the_mlflow_server_holds_the_run_as_its_folder_does(tracked, server, tmp_path):
    run, res = tracked
    saved = json.loads((run/'mlflow.json').read_text())
    assert saved['tracking_uri'] == server
    assert f"petbreeds: MLflow: run {saved['run_id']} (new) in {server}; see it at {server}" in res.stderr
    client = client_for(server)
    logged = client.get_run(saved['run_id'])
    assert (logged.info.status, logged.info.run_name) == ('FINISHED', 'tracked')
    config = json.loads((run/'config.json').read_text())
    params = logged.data.params
    assert {k: params[k] for k in ('arch', 'size', 'bs', 'lr', 'epochs', 'log', 'processes', 'global_bs', 'device')} == {
        'arch': 'resnet18', 'size': '32', 'bs': '16', 'lr': '0.003', 'epochs': '1', 'log': 'tensorboard,mlflow', 'processes': '1',
        'global_bs': '16', 'device': config['device']}
    history = rows(run/'history.csv')
    for name in ('train_loss', 'valid_loss', 'error_rate', 'accuracy'):
        got = [(m.step, m.value) for m in sorted(client.get_metric_history(saved['run_id'], name), key=lambda m: m.step)]
        assert got == [(int(h['epoch']), float(h[name])) for h in history], name
    assert [m.value for m in sorted(client.get_metric_history(saved['run_id'], 'frozen'), key=lambda m: m.step)] == [1.0, 0.0]
    assert {m.value for m in client.get_metric_history(saved['run_id'], 'size')} == {32.0}
    batches = rows(run/'batches.csv')
    for group in ('lr_group0', 'lr_group1', 'lr_group2'):   # every step, every param group
        assert sorted(m.step for m in client.get_metric_history(saved['run_id'], group)) == list(range(1, len(batches) + 1)), group
    lr2 = sorted(client.get_metric_history(saved['run_id'], 'lr_group2'), key=lambda m: m.step)
    assert [round(m.value, 12) for m in lr2] == [round(float(b['lr']), 12) for b in batches]   # batches.csv keeps the last group's
    metrics = json.loads((run/'metrics.json').read_text())
    assert logged.data.metrics['final_error_rate'] == metrics['error_rate'] and logged.data.metrics['final_epochs'] == 2
    artifacts = {a.path for a in client.list_artifacts(saved['run_id'])}
    assert {'model.safetensors', 'metrics.json', 'history.csv', 'config.json', 'loss.png', 'report.html', 'confusion.png'} <= artifacts, artifacts
    assert 'mlflow.json' not in artifacts and not any(a.startswith('events.out') for a in artifacts)
    copy = Path(client.download_artifacts(saved['run_id'], 'metrics.json', str(tmp_path)))
    assert copy.read_bytes() == (run/'metrics.json').read_bytes()

def test_tensorboard_events_hold_every_epoch(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run, res = tracked
    assert f"petbreeds: TensorBoard: event files in {run}; see them with: tensorboard --logdir {run.parent}" in res.stderr
    events = EventAccumulator(str(run)); events.Reload()
    history = rows(run/'history.csv')
    for name in ('train_loss', 'valid_loss', 'error_rate', 'accuracy'):
        got = events.Scalars(name)
        assert [e.step for e in got] == [int(h['epoch']) for h in history], name
        assert [round(e.value, 5) for e in got] == [round(float(h[name]), 5) for h in history], name
    assert len(events.Scalars('lr_group0')) == len(rows(run/'batches.csv'))

def _wait_for_first_epoch(proc, run:Path):
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not ((run/'history.csv').exists() and rows(run/'history.csv')): time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before its first epoch was caught: {proc.communicate()[1][-2000:]}"

@pytest.fixture(scope='module')
def killed_and_resumed(work, server):
    "A tracked run killed after its first epoch (a copy kept as `killed`), then resumed"
    d, env = work
    run, env = d/'runs'/'resumed', {**env, 'MLFLOW_TRACKING_URI': server}
    cmd = [str(BIN/'petbreeds'), 'train', str(d/'images'), *map(str, TINY), '--epochs', '2', '--log', 'mlflow', '--out', str(run)]
    proc = subprocess.Popen(cmd, env=env, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_first_epoch(proc, run)
    proc.send_signal(signal.SIGKILL); proc.communicate()
    shutil.copytree(run, d/'runs'/'killed')
    first_id = json.loads((run/'mlflow.json').read_text())['run_id']
    res = petbreeds_cmd('train', '--resume', '--out', run, env=env, cwd=d)
    return run, first_id, res

def test_a_killed_and_resumed_run_keeps_one_mlflow_run(killed_and_resumed, server):
    run, first_id, res = killed_and_resumed
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run/'mlflow.json').read_text())['run_id'] == first_id
    assert f"petbreeds: MLflow: run {first_id} (continued)" in res.stderr
    client = client_for(server)
    same_folder = client.search_runs([client.get_run(first_id).info.experiment_id], filter_string=f"tags.run_folder = '{run.resolve()}'")
    assert [r.info.run_id for r in same_folder] == [first_id]
    history = rows(run/'history.csv')
    assert [h['epoch'] for h in history] == ['1', '2', '3']
    got = sorted(client.get_metric_history(first_id, 'valid_loss'), key=lambda m: m.step)
    assert [(m.step, m.value) for m in got] == [(int(h['epoch']), float(h['valid_loss'])) for h in history]   # each epoch once
    assert client.get_run(first_id).info.status == 'FINISHED'

def test_a_server_that_stops_mid_run_is_a_warning(work, tmp_path):
    d, env = work
    proc, uri = start_mlflow_server(tmp_path/'server')
    run = tmp_path/'run'
    cmd = [str(BIN/'petbreeds'), 'train', str(d/'images'), *map(str, TINY), '--epochs', '2', '--log', 'mlflow', '--out', str(run)]
    env = {**env, 'MLFLOW_TRACKING_URI': uri, 'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '0'}
    try:
        train = subprocess.Popen(cmd, env=env, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_first_epoch(train, run)
    finally: stop_server(proc)
    out, err = train.communicate(timeout=600)
    assert train.returncode == 0, err[-3000:]
    assert (run/'metrics.json').exists() and (run/'model.safetensors').exists() and len(rows(run/'history.csv')) == 3
    warning = [l for l in err.splitlines() if l.startswith('petbreeds: warning: MLflow at')]
    assert len(warning) == 1 and 'stopped answering' in warning[0] and 'the run goes on without it' in warning[0], err[-3000:]
    assert 'Traceback' not in err

def test_runs_lists_each_status_and_compares(tracked, killed_and_resumed, work, tmp_path):
    d, env = work
    res = petbreeds_cmd('train', d/'images', *TINY, '--lr', '1e6', '--out', d/'runs'/'diverged', env=env, cwd=d)
    assert res.returncode == 2 and 'NaN or infinite' in res.stderr, res.stderr[-2000:]
    listed = petbreeds_cmd('runs', d/'runs', '--json', env=env, cwd=d)
    assert listed.returncode == 0, listed.stderr
    status = {r['run']: r['status'] for r in json.loads(listed.stdout)}
    assert status == {'tracked': 'finished', 'resumed': 'finished', 'killed': 'interrupted (resumable)', 'diverged': 'diverged'}, status
    killed = next(r for r in json.loads(listed.stdout) if r['run'] == 'killed')
    done = rows(d/'runs'/'killed'/'history.csv')
    assert killed['epochs'] == f"{len(done)}/3" and killed['error_rate'] == round(float(done[-1]['error_rate']), 4)
    table = petbreeds_cmd('runs', '--sort', 'error', env=env, cwd=d).stdout.splitlines()   # runs/ by default
    assert table[0].split()[:3] == ['when', 'run', 'arch'] and len(table) == 5
    assert table[-1].split()[2] == 'diverged' and table[-1].endswith(' diverged')   # when (a date and a time), run: no error rate, so last
    odd = d/'runs'/'a<b>&c'
    shutil.copytree(d/'runs'/'tracked', odd)
    compared = petbreeds_cmd('runs', '--compare', 'killed', odd, '--out', tmp_path/'cmp', env=env, cwd=d)
    assert compared.returncode == 0, compared.stderr
    assert 'options that differ: epochs, log' in compared.stdout
    page = (tmp_path/'cmp'/'compare.html').read_text()
    assert 'a&lt;b&gt;&amp;c' in page and 'a<b>' not in page
    from PIL import Image
    assert Image.open(tmp_path/'cmp'/'compare.png').size == (1000, 400)
    bad = petbreeds_cmd('runs', '--compare', 'killed', 'nope', env=env, cwd=d)
    assert bad.returncode == 2 and bad.stderr.startswith("petbreeds: error: 'nope' is not a run folder"), bad.stderr

def test_runs_shows_where_each_runs_labels_came_from(subprocess_env, tmp_path):
    "The label source column (issue 28 item 3): Pets' names for one run, a folder per class for another, in the table and the JSON"
    from petbreeds.testing import relay_kit, synthetic_pets
    kit = synthetic_pets(tmp_path/'kit', per_class=4, size=48)   # 8 images of the two relaid breeds: a validation share of 0.2 is one
    folders = relay_kit(kit, tmp_path/'folders', {'Luna': 'Bengal', 'Max': 'pug'}, 'folders')
    one_epoch = [*TINY[:TINY.index('--bs')], '--bs', 4, '--freeze-epochs', 1, '--epochs', 0, '--num-workers', 0]
    for images, name in ((kit, 'named'), (folders, 'foldered')):
        res = petbreeds_cmd('train', images, *one_epoch, '--out', tmp_path/'runs'/name, env=subprocess_env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
    listed = petbreeds_cmd('runs', '--json', env=subprocess_env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert {r['run']: r['labels'] for r in json.loads(listed.stdout)} == {'named': 'pets', 'foldered': 'folders'}, listed.stdout
    table = petbreeds_cmd('runs', env=subprocess_env, cwd=tmp_path).stdout.splitlines()
    header = table[0].split()
    assert header[header.index('recipe') + 1] == 'labels', table[0]
    at = table[0].index('labels')   # the column's values start where its title does
    assert sorted(line[at:].split()[0] for line in table[1:]) == ['folders', 'pets'], table
