"""Data-parallel training on two CPU processes over gloo (`petbreeds.distributed`): one model in both processes,
validation counting each image once, fastai's own DistributedDL failing on a CPU, and a process that dies or
stalls ending the run with one line instead of a hang.

Run as a script, this file is the training program each process runs:
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/test_distributed.py ok OUT IMAGES TIMEOUT
"""
import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--local-addr', '127.0.0.1', '--nproc-per-node', '2']
LOST = 'lost the other processes'   # petbreeds.distributed's one line when a peer is gone

# ---- the program each process runs ------------------------------------------------------------------------

def worker(mode:str, out:Path, images:Path, timeout:float):
    "Train one epoch on `images` data-parallel; `mode`: ok, fastai (stock DistributedDL), die or hang (process 1, batch 2)"
    import hashlib
    import torch
    from fastai.callback.core import Callback
    from petbreeds.core import PetbreedsError, data_home, seed_everything
    from petbreeds.data import pets_dataloaders
    from petbreeds.distributed import data_parallel, init_distributed, main_process_first
    from petbreeds.interpret import evaluate
    from petbreeds.learner import pets_learner

    class Watch(Callback):
        "Count what this process trains on and what validation counts; make trouble if asked"
        def before_fit(self): self.trained = 0
        def after_batch(self):
            if not self.training: return
            self.trained += len(self.yb[0])
            if self.iter == 1 and me.rank == 1 and mode == 'die': os._exit(1)
            if self.iter == 1 and me.rank == 1 and mode == 'hang': time.sleep(300)
        def after_validate(self): self.counted = getattr(self.learn.recorder.loss, 'count', None)

    import atexit
    import torch.distributed as dist
    def at_exit():   # registered before joining, so it runs after what init_distributed registers (last in, first out)
        (out/f'rank{os.environ["RANK"]}.exit').write_text('left' if not dist.is_initialized() else 'still in the process group')
    atexit.register(at_exit)
    try:
        me = init_distributed('cpu', timeout=timeout)
        seed_everything(0)
        with main_process_first():
            built = not list((data_home()/'cache').glob('presize-*/index.json'))
            dls = pets_dataloaders(images, bs=8, size=64, presize=64, valid_pct=0.35, device='cpu', progress=False)
        learn, watch = pets_learner(dls, 'resnet18', weights='none'), Watch()
        parallel = learn.distrib_ctx(sync_bn=False, cpu=True) if mode == 'fastai' else data_parallel(learn, timeout=timeout)
        with parallel, learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(1, 1e-3, cbs=watch)
            valid_loss, error_rate = [float(v) for v in learn.recorder.values[-1][1:3]]   # before get_preds rewrites it
            ev = evaluate(learn)
        state = learn.model.state_dict()   # parameters and BatchNorm statistics
        checksum = hashlib.sha256(b''.join(v.numpy().tobytes() for v in state.values())).hexdigest()
        if me.is_main: torch.save(state, out/'model.pth')
        (out/f'rank{me.rank}.json').write_text(json.dumps(dict(
            rank=me.rank, world=me.world_size, built=built, trained=watch.trained, n_train=len(dls.train_ds),
            counted=watch.counted, n_valid=len(dls.valid_ds), evaluated=len(ev.targets), ev_targets=ev.targets.tolist(),
            valid_targets=[int(y) for _, y in dls.valid_ds], valid_loss=valid_loss, error_rate=error_rate, checksum=checksum)))
    except PetbreedsError as e:   # as the petbreeds command does: one line, exit 2
        print(f"petbreeds: {e.one_line()}", file=sys.stderr, flush=True)
        sys.exit(2)

# ---- the tests -------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def images(tmp_path_factory):
    "74 synthetic pets at 64 px: 25 validation images (odd, so two processes need padding), 49 training"
    from petbreeds.testing import synthetic_pets
    return synthetic_pets(tmp_path_factory.mktemp('kit')/'images', per_class=2, size=64)

def env_for(tmp:Path) -> dict:
    "Each run its own data home (so its cache is built afresh), one thread per process on a small machine"
    return {**os.environ, 'PETBREEDS_HOME': str(tmp/'home'), 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}

def run(cmd:list, env:dict, limit:float=240):
    started = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
    return res, time.perf_counter() - started

def torchrun(mode:str, out:Path, images:Path, env:dict, timeout:float=60, limit:float=240):
    out.mkdir(parents=True, exist_ok=True)
    return run([*TORCHRUN, str(HERE), mode, str(out), str(images), str(timeout)], env, limit)

def ranks(out:Path) -> list: return [json.loads((out/f'rank{r}.json').read_text()) for r in (0, 1)]

@pytest.fixture(scope='module')
def two_processes(images, tmp_path_factory):
    out = tmp_path_factory.mktemp('ok')
    res, _ = torchrun('ok', out, images, env_for(out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out, ranks(out)

def test_two_processes_train_one_model(two_processes):
    out, (r0, r1) = two_processes
    assert r0['world'] == r1['world'] == 2
    assert r0['checksum'] == r1['checksum'], "the replicas' weights differ after the epoch"
    assert (r0['built'], r1['built']) == (True, False), "the presize cache is built by process 0 alone, then found"
    # 49 training images: 3 global batches of 2 x 8, the 1 + 1 left over dropped as an incomplete batch
    assert r0['trained'] == r1['trained'] == 24 and r0['n_train'] == 49

def test_each_process_leaves_the_process_group_before_it_exits(two_processes):
    "Without destroy_process_group, gloo's threads die with the interpreter: now and then a SIGABRT after a finished run"
    out, _ = two_processes
    assert [(out/f'rank{r}.exit').read_text() for r in (0, 1)] == ['left', 'left']

def test_validation_counts_each_image_once(two_processes, images, monkeypatch):
    out, (r0, r1) = two_processes
    for r in (r0, r1):
        assert r['n_valid'] == 25 and r['counted'] == 25 and r['evaluated'] == 25   # fastai alone would count 26
        assert r['ev_targets'] == r['valid_targets'], "gathered predictions are in the dataset's order"
    assert (r0['valid_loss'], r0['error_rate']) == (r1['valid_loss'], r1['error_rate'])
    # process 0's model, validated by one process with fastai's plain validate, gives the same numbers
    import torch
    from petbreeds.data import pets_dataloaders
    from petbreeds.learner import pets_learner
    monkeypatch.setenv('PETBREEDS_HOME', str(out/'home'))
    dls = pets_dataloaders(images, bs=8, size=64, presize=64, valid_pct=0.35, device='cpu', progress=False)
    learn = pets_learner(dls, 'resnet18', weights='none')
    learn.model.load_state_dict(torch.load(out/'model.pth'))
    with learn.no_bar(), learn.no_logging(): valid_loss, error_rate, _ = learn.validate()
    assert abs(r0['error_rate'] - error_rate) < 1e-6 and abs(r0['valid_loss'] - valid_loss) < 1e-5

def test_accelerate_launch_trains_the_same_model(two_processes, images, tmp_path):
    pytest.importorskip('accelerate')
    _, (r0, _) = two_processes
    res, _ = run([sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
                  '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_ip', '127.0.0.1', '--main_process_port', str(free_port()),
                  str(HERE), 'ok', str(tmp_path), str(images), '60'], env_for(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    a0, a1 = ranks(tmp_path)
    assert a0['checksum'] == a1['checksum'] == r0['checksum'], "accelerate and torchrun train the same model"
    assert a0['counted'] == 25

def test_fastai_distributed_dl_fails_on_a_cpu(images, tmp_path):
    "Why AnyDeviceDistributedDL exists: fastai 2.8.7's own DistributedDL moves indices to CUDA. When this fails, drop the fix."
    import torch
    if torch.cuda.is_available(): pytest.skip('the fault shows only on a machine without CUDA')
    res, _ = torchrun('fastai', tmp_path, images, env_for(tmp_path))
    assert res.returncode != 0
    assert 'Found no NVIDIA driver' in res.stderr or 'not compiled with CUDA' in res.stderr, res.stderr[-3000:]

@pytest.mark.hostile
def test_a_stalled_process_ends_the_run_with_one_line(images, tmp_path):
    "Process 1 hangs mid-epoch (alive, so torchrun can't see it); process 0's collective times out after 5 s"
    res, seconds = torchrun('hang', tmp_path, images, env_for(tmp_path), timeout=5, limit=150)
    assert res.returncode != 0
    lines = [l for l in res.stderr.splitlines() if l.startswith('petbreeds: ')]
    assert len(lines) == 1 and 'process 0 of 2 ' + LOST + ' while training (Timed out' in lines[0], res.stderr[-3000:]
    assert seconds < 120

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.mark.hostile
def test_a_dead_process_ends_the_run_with_one_line(images, tmp_path):
    "Two processes started by hand, as on two machines: nobody to clean up but the survivor itself"
    port, procs = free_port(), []
    for rank in (0, 1):
        (tmp_path/f'm{rank}').mkdir()
        env = {**env_for(tmp_path/f'm{rank}'), 'RANK': str(rank), 'LOCAL_RANK': '0', 'WORLD_SIZE': '2',
               'LOCAL_WORLD_SIZE': '1', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port)}
        procs.append(subprocess.Popen([sys.executable, str(HERE), 'die', str(tmp_path/f'm{rank}'), str(images), '5'],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    started = time.perf_counter()
    try: outputs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs: p.kill()
    assert procs[1].returncode == 1                               # it died
    assert procs[0].returncode == 2, outputs[0][1][-3000:]        # the survivor stopped with petbreeds' error
    last = outputs[0][1].strip().splitlines()[-1]
    assert last.startswith('petbreeds: process 0 of 2 ' + LOST + ' while training ('), last
    assert time.perf_counter() - started < 120

# ---- the command, as a user runs it ----------------------------------------------------------------------

ACCURACY_TOLERANCE = 0.2   # two processes (BatchNorm over 8 images each, no SyncBatchNorm on a CPU) vs one (over 16)

@pytest.fixture(scope='module')
def cli_runs(tmp_path_factory, subprocess_env):
    "`petbreeds train --nproc 2` and the same run in one process with the same global batch, on 111 kit images"
    from test_cli import petbreeds_cmd
    from petbreeds.testing import synthetic_pets
    d = tmp_path_factory.mktemp('cli')
    images = synthetic_pets(d/'images', per_class=3, size=64)
    env = {**subprocess_env, 'PETBREEDS_HOME': str(d/'home'), 'OMP_NUM_THREADS': '1'}   # offline, stand-in weights
    common = [images, '--arch', 'resnet18', '--size', 64, '--presize', 64, '--epochs', 1, '--freeze-epochs', 1, '--valid-pct', 0.3, '--num-workers', 0]
    tracking = f"sqlite:///{tmp_path_factory.mktemp('tracking')/'mlflow.db'}"   # outside d: the run writes nothing else there
    two = petbreeds_cmd('train', *common, '--bs', 8, '--nproc', 2, '--out', d/'two', '--log', 'tensorboard,mlflow',
                        env={**env, 'MLFLOW_TRACKING_URI': tracking}, cwd=d, timeout=600)
    one = petbreeds_cmd('train', *common, '--bs', 16, '--out', d/'one', env=env, cwd=d, timeout=600)
    return d, two, one, tracking

def test_train_nproc_2_writes_one_run_folder_once(cli_runs):
    d, two, _, _ = cli_runs
    assert two.returncode == 0, two.stderr[-3000:]
    lines = two.stdout.splitlines()   # process 0 alone prints: each line once
    assert [l.split(' ')[:2] for l in lines if l.startswith('epoch ')] == [['epoch', '1'], ['epoch', '2']], two.stdout
    assert sum(l.startswith('run folder: ') for l in lines) == 1 and sum(l.startswith('error_rate ') for l in lines) == 1, two.stdout
    said = two.stderr.strip().splitlines()   # process 0 alone logs to the trackers: each says where, once
    assert [l.split(':')[1] for l in said[1:]] == [' TensorBoard', ' MLflow'], two.stderr
    assert said[0] == f"petbreeds: training as 2 data-parallel processes under torchrun; run folder: {d/'two'}", two.stderr
    assert 'data-parallel: 2 processes x batch 8 = global batch 16, lr 0.003' in two.stdout
    assert not (d/'runs').exists() and sorted(p.name for p in d.iterdir()) == ['home', 'images', 'one', 'two']
    history = (d/'two'/'history.csv').read_text().splitlines()
    assert len(history) == 3, history                                  # a header and two epochs: written by one process
    assert {'model.safetensors', 'metrics.json', 'config.json', 'loss.png', 'report.html'} <= {p.name for p in (d/'two').iterdir()}

def test_train_nproc_2_replicas_agree_and_validation_counts_once(cli_runs):
    d, two, one, _ = cli_runs
    assert two.returncode == one.returncode == 0, two.stderr[-3000:] + one.stderr[-3000:]
    m2, m1 = (json.loads((d/name/'metrics.json').read_text()) for name in ('two', 'one'))
    config = json.loads((d/'two'/'config.json').read_text())
    assert (m2['processes'], m2['bs_per_process'], m2['global_bs']) == (2, 8, 16)
    assert (m1['processes'], m1['global_bs'], m1['replica_checksums']) == (1, 16, None)
    assert len(m2['replica_checksums']) == 2 and len(set(m2['replica_checksums'])) == 1, m2['replica_checksums']
    assert m2['valid_images_evaluated'] == config['valid_images'] == m1['valid_images_evaluated'] == 33
    assert abs(m2['accuracy'] - m1['accuracy']) <= ACCURACY_TOLERANCE, (m2['accuracy'], m1['accuracy'])
    from petbreeds.inference import Predictor    # the model file is whole and answers
    assert Predictor.from_file(d/'two'/'model.safetensors').predict([next((d/'images').glob('pug_*.jpg'))])[0]['predictions']

def test_train_nproc_2_is_one_tracked_run(cli_runs):
    "Process 0 alone logs: one MLflow run, with the processes and the global batch; one TensorBoard event file"
    from mlflow import MlflowClient
    d, two, _, tracking = cli_runs
    assert two.returncode == 0, two.stderr[-3000:]
    client = MlflowClient(tracking)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.run_id == json.loads((d/'two'/'mlflow.json').read_text())['run_id']
    params = runs[0].data.params
    assert (params['processes'], params['global_bs'], params['bs'], runs[0].info.status) == ('2', '16', '8', 'FINISHED')
    assert len(list((d/'two').glob('events.out.tfevents.*'))) == 1

def _worker_pid(out:Path, local_rank:int) -> int|None:
    "The pid of the training process with `local_rank` whose command line names the run folder `out`"
    for proc in Path('/proc').iterdir():
        if not proc.name.isdigit(): continue
        try:
            cmd = (proc/'cmdline').read_bytes().split(b'\0')
            env = (proc/'environ').read_bytes().split(b'\0')
        except OSError: continue
        if str(out).encode() in cmd and b'train' in cmd and f'LOCAL_RANK={local_rank}'.encode() in env: return int(proc.name)
    return None

@pytest.mark.hostile
def test_a_distributed_run_whose_process_dies_resumes(cli_runs, subprocess_env):
    "Process 1 is killed after the first unfrozen epoch; `--resume --nproc 2` finishes the run on two processes"
    import signal
    from test_cli import BIN, petbreeds_cmd
    d, _, _, _ = cli_runs
    run = d/'resumed'
    env = {**subprocess_env, 'PETBREEDS_HOME': str(d/'home'), 'OMP_NUM_THREADS': '1'}
    cmd = [str(BIN/'petbreeds'), 'train', str(d/'images'), '--arch', 'resnet18', '--size', '64', '--presize', '64', '--epochs', '3',
           '--freeze-epochs', '1', '--valid-pct', '0.3', '--num-workers', '0', '--bs', '8', '--nproc', '2', '--out', str(run)]
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress, deadline, killed = run/'checkpoints'/'progress.json', time.time() + 300, None
    try:
        while time.time() < deadline and launcher.poll() is None:
            if progress.exists() and json.loads(progress.read_text())['stage'] == 1:   # the first unfrozen epoch is done
                killed = _worker_pid(run, 1)
                if killed: os.kill(killed, signal.SIGKILL)
                break
            time.sleep(0.1)
        _, err = launcher.communicate(timeout=240)
    finally: launcher.kill()
    assert killed, "the run ended before process 1 could be killed"
    assert launcher.returncode != 0, err[-3000:]                  # the run stopped: torchrun ended process 0 too
    assert not (run/'model.safetensors').exists()
    res = petbreeds_cmd('train', '--resume', '--out', run, '--nproc', 2, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'resuming the run in' in res.stderr
    with open(run/'history.csv') as f: rows = list(csv.DictReader(f))
    assert [int(r['epoch']) for r in rows] == [1, 2, 3, 4] and [r['stage'] for r in rows] == ['frozen'] + ['unfrozen'] * 3
    metrics = json.loads((run/'metrics.json').read_text())
    assert metrics['processes'] == 2 and metrics['epochs'] == 4 and len(set(metrics['replica_checksums'])) == 1

if __name__ == '__main__':
    mode, out, images, timeout = sys.argv[1:5]
    worker(mode, Path(out), Path(images), float(timeout))
