"""Experiment tracking end to end (`petbreeds.tracking`, `petbreeds runs`): a real `mlflow server` over SQLite on a
loopback port receives tiny runs, read back with `MlflowClient`; TensorBoard's event files read back with its own
`EventAccumulator`; the LR finder's curve in both; MLflow's UI and TensorBoard opened in headless chromium; a killed
and resumed run keeps one MLflow run; a server that stops mid-run is a warning; and `petbreeds runs` tells finished,
interrupted and diverged runs apart."""
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

# the LR finder on the same 74 images: random weights, a small batch, 30 steps (it can stop sooner; fastai's suggestions need 16 left of its curve)
FINDER = ['--arch', 'resnet18', '--weights', 'none', '--size', 32, '--presize', 40, '--bs', 8, '--num-workers', 0, '--steps', 30]

def test_lr_find_logs_its_curve_to_both_trackers(work, server, tmp_path):
    "`petbreeds lr-find --log tensorboard,mlflow`: every step of the finder's curve (its last too), its options, suggestions and plot"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    d, env = work
    out = tmp_path/'runs'/'finder'   # not in work's runs/, which test_runs_lists_each_status_and_compares lists whole
    res = petbreeds_cmd('lr-find', d/'images', *FINDER, '--log', 'tensorboard,mlflow', '--out', out, env={**env, 'MLFLOW_TRACKING_URI': server}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    found = json.loads((out/'lr_find.json').read_text())
    lrs, losses = found['curve']['lr'], found['curve']['smooth_loss']
    assert 16 <= len(lrs) == len(losses) <= found['finder']['num_it'] == 30 and lrs == sorted(lrs), found['finder']
    printed = {w[0]: w[1] for w in map(str.split, res.stdout.splitlines()) if len(w) == 2 and w[0] in found['suggestions']}
    assert printed == {k: f"{v:.2e}" for k, v in found['suggestions'].items()}, res.stdout
    steps = list(range(1, len(lrs) + 1))

    saved = json.loads((out/'mlflow.json').read_text())
    client = client_for(server)
    logged = client.get_run(saved['run_id'])
    assert (logged.info.status, logged.info.run_name) == ('FINISHED', 'finder')
    params = logged.data.params
    assert {k: params[k] for k in ('kind', 'arch', 'size', 'bs', 'weights', 'log', 'lr_find.num_it', 'lr_find.start_lr', 'lr_find.end_lr', 'train_images')} == {
        'kind': 'lr-find', 'arch': 'resnet18', 'size': '32', 'bs': '8', 'weights': 'none', 'log': 'tensorboard,mlflow',
        'lr_find.num_it': '30', 'lr_find.start_lr': '1e-07', 'lr_find.end_lr': '10.0', 'train_images': str(found['train_images'])}
    def history(name): return sorted(client.get_metric_history(saved['run_id'], name), key=lambda m: m.step)
    for group in ('lr_group0', 'lr_group1', 'lr_group2'):   # the finder grows every param group's rate alike
        assert [(m.step, m.value) for m in history(group)] == list(zip(steps, lrs)), group
    assert [(m.step, m.value) for m in history('train_smooth_loss_step')] == list(zip(steps, losses))   # the plotted curve, step by step
    assert [m.step for m in history('train_loss_step')] == steps
    assert {k: logged.data.metrics[f'final_lr_{k}'] for k in found['suggestions']} == found['suggestions']
    assert {a.path for a in client.list_artifacts(saved['run_id'])} == {'lr_find.png', 'lr_find.json'}
    plot = Path(client.download_artifacts(saved['run_id'], 'lr_find.png', str(tmp_path)))
    assert plot.read_bytes() == (out/'lr_find.png').read_bytes()

    events = EventAccumulator(str(out)); events.Reload()
    got = events.Scalars('train_smooth_loss_step')   # float32 in the event file
    assert [e.step for e in got] == steps and [e.value for e in got] == pytest.approx(losses, rel=1e-6)
    assert [e.value for e in events.Scalars('lr_group0')] == pytest.approx(lrs, rel=1e-6)
    assert [round(events.Scalars(f'final_lr_{k}')[0].value, 12) for k in found['suggestions']] == pytest.approx(list(found['suggestions'].values()), rel=1e-6)

def test_mlflow_ui_and_tensorboard_show_the_run_in_a_browser(tracked, server, work, tmp_path):
    "MLflow's own UI (the test's server) and TensorBoard, opened in headless chromium, show the tracked run: its name, options and curves"
    import playwright.sync_api as playwright   # a dev requirement: never skipped
    from test_serve import BROWSER_ARGS, CHROMIUM, running
    assert Path(CHROMIUM).exists(), f"the browser test needs Debian's chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"
    expect, wait = playwright.expect, 120_000   # ms: a busy 2-core machine
    run, _ = tracked
    saved = json.loads((run/'mlflow.json').read_text())
    shots = Path(os.environ.get('PETBREEDS_SCREENSHOTS') or tmp_path); shots.mkdir(parents=True, exist_ok=True)   # to look at them: set it
    port = free_port()
    tensorboard = [str(BIN/'tensorboard'), '--logdir', str(run.parent), '--host', '127.0.0.1', '--port', str(port)]
    with running(tensorboard, f"http://127.0.0.1:{port}/", env=work[1], cwd=tmp_path, log=tmp_path/'tensorboard.log'), \
         playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={'width': 1400, 'height': 1200})
            page.set_default_timeout(wait)
            # MLflow 3 opens in its GenAI view: the run's page in its "Model training" one, as its own switch links it
            page.goto(f"{server}/#/experiments/{saved['experiment_id']}/runs/{saved['run_id']}?workflowType=machine_learning")
            expect(page.get_by_role('heading', name='tracked', exact=True)).to_be_visible()   # the run's name
            expect(page.get_by_role('button', name='Model training')).to_be_visible()
            assistant = page.get_by_role('button', name='Close')   # MLflow's chat panel, open by default, covers a third of the page
            if assistant.count(): assistant.first.click()
            search = page.get_by_placeholder('Search parameters')   # the parameters table's own search
            search.scroll_into_view_if_needed()
            for name, value in (('log', 'tensorboard,mlflow'), ('bs', '16'), ('arch', 'resnet18')):   # not size: a metric's name too; arch last, for the screenshot
                search.fill(name)
                expect(page.get_by_role('row').filter(has=page.get_by_text(name, exact=True)).filter(has=page.get_by_text(value, exact=True))).to_have_count(1)
            page.screenshot(path=str(shots/'tracking_mlflow_run.png'), full_page=True)
            page.get_by_role('tab', name='Model metrics').click()
            expect(page.get_by_text('tracked (error_rate)', exact=True)).to_be_visible()   # a chart drawn, its legend the run
            page.get_by_placeholder('Search metric charts').fill('loss')
            for name in ('train_loss', 'valid_loss'):   # drawn as they scroll into view
                page.get_by_role('heading', name=name, exact=True).scroll_into_view_if_needed()
                expect(page.get_by_text(f'tracked ({name})', exact=True)).to_be_visible()
            page.screenshot(path=str(shots/'tracking_mlflow_metrics.png'), full_page=True)
            # TensorBoard: the run in its runs list, a card per tag
            page.goto(f"http://127.0.0.1:{port}/#timeseries")
            expect(page.get_by_text('tracked', exact=True).first).to_be_visible()
            for name in ('train_loss', 'valid_loss', 'error_rate', 'accuracy', 'lr_group0', 'train_smooth_loss_step'):
                expect(page.get_by_text(name, exact=True).first).to_be_attached()   # each tag's group
            tags = page.get_by_role('combobox', name='Filter tags (regex)')
            tags.fill('^(valid_loss|error_rate)$'); tags.press('Escape')   # two cards, the suggestions list closed
            expect(page.get_by_text('2 cards')).to_be_visible()
            history = rows(run/'history.csv')
            for name in ('valid_loss', 'error_rate'):   # each card: its title, and in its table the run's value at its last epoch
                card = page.locator('scalar-card-component').filter(has=page.locator('tb-truncated-path.tag', has_text=name))
                row = card.locator('tb-data-table-content-row', has_text='tracked')
                expect(row).to_be_visible()
                cells = [c.strip() for c in row.locator('tb-data-table-content-cell').all_inner_texts()]
                assert f"{float(history[-1][name]):.4f}".rstrip('0').rstrip('.') in cells and str(len(history)) in cells, (name, cells)
            page.wait_for_timeout(3000)   # the curves are drawn on a canvas, off the page's text: a moment for the screenshot
            page.screenshot(path=str(shots/'tracking_tensorboard.png'), full_page=True)
        finally: browser.close()

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
