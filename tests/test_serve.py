"""The web app end to end: a real server on loopback, driven by a browser and by gradio_client, and a Hugging Face Space run without petbreeds."""
import contextlib
import shutil
import site
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import STANDIN_DEMO
from PIL import Image

from test_cli import BIN, assert_one_line_error, petbreeds_cmd

TESTS = Path(__file__).parent
START_TIMEOUT = 240   # seconds for a server to answer its page: importing gradio and torch on a busy 2-core machine
CALL_TIMEOUT = 120    # seconds for one API call

def serve_cmd(model, port) -> list:
    "The command that serves `model` on 127.0.0.1:`port` until it is stopped"
    return [str(BIN/'petbreeds'), 'serve', str(model), '--port', str(port)]

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def wait_for_page(url, proc, log, timeout=START_TIMEOUT):
    "Wait until `url` answers 200, failing at once if `proc` exits first"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None: pytest.fail(f"the server exited with {proc.returncode}:\n{Path(log).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                if r.status == 200: return
        except OSError: time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{Path(log).read_text()[-3000:]}")

@contextlib.contextmanager
def running(cmd, url, *, env, cwd, log):
    "Run the server `cmd` until `url` answers; stop it when the block ends, whatever happened"
    with open(log, 'w') as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_page(url, proc, log)
            yield proc
        finally:
            proc.terminate()
            try: proc.wait(timeout=20)
            except subprocess.TimeoutExpired: proc.kill(); proc.wait(timeout=20)

def ask(client, path):
    "The `classify` endpoint's JSON for the file at `path` (bounded wait)"
    from gradio_client import handle_file
    return client.submit(handle_file(str(path)), api_name='/classify').result(timeout=CALL_TIMEOUT)

def top_label(model, path) -> str:
    from petbreeds.inference import Predictor
    return Predictor.from_file(model).predict([path])[0]['predictions'][0]['label']

@pytest.fixture(scope='module')
def demo_model(tmp_path_factory, subprocess_env):
    "A demo model: one frozen epoch on the synthetic kit, with stand-in weights"
    out = tmp_path_factory.mktemp('serve_model')/'run'
    res = petbreeds_cmd('train', *STANDIN_DEMO, '--epochs', 0, '--freeze-epochs', 1, '--out', out, env=subprocess_env)
    assert res.returncode == 0, res.stderr
    return out/'model.safetensors'

@pytest.fixture(scope='module')
def uploads(tmp_path_factory):
    "Files to upload: kit photos, the real set's odd files, a decompression bomb, a large photo, an EXIF-rotated one"
    from petbreeds.testing import synthetic_pets
    d = tmp_path_factory.mktemp('serve_uploads')
    kit = synthetic_pets(d/'kit', per_class=1, size=96, seed=1, quirks=True)
    Image.new('1', (20_000, 20_000)).save(d/'bomb.png')                        # 400 million pixels in ~50 KB
    Image.open(kit/'beagle_1.jpg').resize((6000, 4000)).save(d/'large.jpg', quality=85)
    upright = Image.open(kit/'Bengal_1.jpg').convert('RGB').crop((0, 0, 60, 90))
    exif = Image.Exif(); exif[0x0112] = 6                                       # "turn 90 degrees clockwise to view"
    upright.transpose(Image.Transpose.ROTATE_90).save(d/'sideways.png', exif=exif)
    upright.save(d/'upright.png')
    (d/'empty.jpg').write_bytes(b'')
    return {'kit': kit, 'good': [kit/'pug_1.jpg', kit/'Siamese_1.jpg', kit/'beagle_1.jpg', kit/'Bengal_1.jpg'],
            'bomb': d/'bomb.png', 'large': d/'large.jpg', 'sideways': d/'sideways.png', 'upright': d/'upright.png',
            'empty': d/'empty.jpg'}

@pytest.fixture(scope='module')
def server(tmp_path_factory, subprocess_env, demo_model):
    "`petbreeds serve` on the demo model, on a free loopback port, in an empty working folder with a private TMPDIR"
    d = tmp_path_factory.mktemp('serve_server')
    (d/'cwd').mkdir(); (d/'tmp').mkdir()
    port = free_port()
    url = f'http://127.0.0.1:{port}/'
    env = {**subprocess_env, 'TMPDIR': str(d/'tmp'), 'GRADIO_ANALYTICS_ENABLED': 'False'}
    with running(serve_cmd(demo_model, port), url, env=env, cwd=d/'cwd', log=d/'server.log') as proc:
        yield {'url': url, 'port': port, 'cwd': d/'cwd', 'tmp': d/'tmp', 'proc': proc, 'log': d/'server.log'}
    assert proc.returncode == 0 and not list((d/'tmp').glob('petbreeds-serve-*')), (d/'server.log').read_text()[-2000:]   # stopped cleanly, uploads removed

@pytest.fixture(scope='module')
def client(server):
    from gradio_client import Client
    return Client(server['url'], verbose=False)

CHROMIUM = '/usr/bin/chromium'   # Debian's; playwright's own browser download can't run offline
BROWSER_ARGS = ['--no-sandbox', '--headless=new', '--disable-gpu', '--disable-quic', '--no-first-run',
                '--disable-background-networking', '--disable-component-update', '--disable-sync']

def test_browser_upload_shows_the_predictors_top_breed(server, demo_model, uploads, tmp_path):
    import playwright.sync_api as playwright   # a dev requirement: never skipped
    assert Path(CHROMIUM).exists(), f"the browser test needs Debian's chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"
    expect = playwright.expect
    expected = {f: top_label(demo_model, f) for f in uploads['good']}
    first = uploads['good'][0]
    third = next(f for f in uploads['good'][1:] if expected[f] != expected[first])   # a different answer, so a stale one can't pass
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={'width': 1280, 'height': 1000})
            page.set_default_timeout(CALL_TIMEOUT * 1000)
            page.goto(server['url'])
            upload = page.locator('#photo input[type=file]')
            label = page.locator('#breeds [data-testid=label-output-value]')
            upload.set_input_files(str(first))
            expect(label).to_have_text(expected[first], timeout=CALL_TIMEOUT * 1000)
            expect(page.locator('#summary')).to_contain_text('predicted in')
            expect(page.locator('#heatmap img')).to_be_visible(timeout=CALL_TIMEOUT * 1000)   # where the model looked

            upload.set_input_files(str(uploads['kit']/'Bengal_906.jpg'))              # a JPEG cut off half way
            expect(page.get_by_text("'Bengal_906.jpg' is damaged or cut short").first).to_be_visible(timeout=CALL_TIMEOUT * 1000)
            expect(page.locator('#summary')).to_contain_text("No result: 'Bengal_906.jpg' is damaged or cut short")
            expect(label).to_have_count(0)                                              # the earlier photo's breeds are gone
            page.screenshot(path=str(tmp_path/'serve_error.png'), full_page=True)
            page.locator('[data-testid=toast-close]').first.click()                     # dismiss the pop-up; the line stays

            upload.set_input_files(str(third))
            expect(label).to_have_text(expected[third], timeout=CALL_TIMEOUT * 1000)
            page.screenshot(path=str(tmp_path/'serve.png'), full_page=True)
            shutil.copyfile(tmp_path/'serve.png', '/tmp/serve_screenshot.png')
        finally: browser.close()
    assert server['proc'].poll() is None

def test_api_answers_as_the_predictor_does(client, demo_model, uploads):
    from petbreeds.inference import Predictor
    predictor = Predictor.from_file(demo_model)
    files = uploads['good'][:2] + [uploads['kit']/n for n in ('Abyssinian_902.jpg', 'Egyptian_Mau_901.jpg', 'Egyptian_Mau_903.jpg')] + [uploads['large']]
    for f in files:   # plain JPEGs, CMYK, grayscale, a PNG with alpha named .jpg, a 6000x4000 photo
        got, want = ask(client, f), predictor.predict([f])[0]
        assert got['labels'] == [p['label'] for p in want['predictions']], f
        assert got['probabilities'] == pytest.approx([p['probability'] for p in want['predictions']], abs=1e-4), f
        assert got['species'] == want['species'] and got['seconds'] > 0
    rotated, upright = ask(client, uploads['sideways']), predictor.predict([uploads['upright']])[0]   # EXIF orientation 6
    assert rotated['labels'] == [p['label'] for p in upright['predictions']]
    assert rotated['probabilities'] == pytest.approx([p['probability'] for p in upright['predictions']], abs=1e-4)
    as_stored = Image.open(uploads['sideways']).convert('RGB'); as_stored.info.pop('exif', None)   # the pixels without their tag
    assert predictor.predict([as_stored])[0]['predictions'] != upright['predictions']   # the turn mattered
    assert predictor.predict([uploads['sideways']])[0]['predictions'] == upright['predictions']   # and every command makes it
    assert list(client.view_api(print_info=False, return_format='dict')['named_endpoints']) == ['/classify', '/explain']

def test_api_explain_gives_the_explain_commands_picture(client, demo_model, uploads):
    import numpy as np
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from petbreeds.explain import TITLE_BAR, explain
    for f in (uploads['good'][0], uploads['sideways']):   # and the EXIF-turned photo, upright
        got = Image.open(client.submit(handle_file(str(f)), api_name='/explain').result(timeout=CALL_TIMEOUT)).convert('RGB')
        want = explain(demo_model, [f])[0]['picture']
        assert np.array_equal(np.asarray(got), np.asarray(want)), f
    upright = Image.open(uploads['upright'])
    assert got.size == (upright.width, upright.height + TITLE_BAR)                # the photo's own shape, title strip above
    with pytest.raises(AppError) as err: client.submit(handle_file(str(uploads['kit']/'Bengal_906.jpg')), api_name='/explain').result(timeout=CALL_TIMEOUT)
    assert "'Bengal_906.jpg' is damaged or cut short" in str(err.value)

@pytest.mark.parametrize('name, message', [
    ('Abyssinian_100.mat', 'is not an image'),           # not an image
    ('Bengal_906.jpg', 'is damaged or cut short'),       # truncated
    ('empty', 'is not an image'),                        # zero bytes
    ('bomb', 'more pixels than the safe limit'),         # decompression bomb
])
@pytest.mark.hostile
def test_api_bad_uploads_get_a_message_and_the_server_carries_on(client, demo_model, uploads, server, name, message):
    from gradio_client.exceptions import AppError
    path = uploads[name] if name in uploads else uploads['kit']/name
    with pytest.raises(AppError) as err: ask(client, path)
    assert message in str(err.value) and f"'{path.name}'" in str(err.value), str(err.value)
    assert 'petbreeds-serve-' not in str(err.value)            # the file's name, not the server's temporary path
    assert ask(client, uploads['good'][0])['labels'][0] == top_label(demo_model, uploads['good'][0])
    assert server['proc'].poll() is None and 'Traceback' not in server['log'].read_text()

@pytest.mark.hostile
def test_uploads_stay_in_a_private_temp_folder(client, server, uploads):
    ask(client, uploads['good'][1])
    assert list(server['cwd'].iterdir()) == []                          # nothing in the working folder
    assert not (server['tmp']/'gradio').exists()                        # nor in gradio's shared temp folder
    private = list(server['tmp'].glob('petbreeds-serve-*/uploads'))
    assert len(private) == 1 and list(private[0].rglob(uploads['good'][1].name)), list(server['tmp'].rglob('*'))[:20]

@pytest.mark.hostile
def test_serve_refuses_bad_model_files_in_one_line(subprocess_env, tmp_path, server, demo_model):
    (tmp_path/'notes.txt').write_text('not a model')
    (tmp_path/'evil.safetensors').write_bytes(b'\x80\x04\x95 a pickle that would run code when unpickled')
    for model, fragment in [(tmp_path/'missing.safetensors', 'does not exist'), (tmp_path/'notes.txt', 'is not a petbreeds model file'),
                            (tmp_path/'evil.safetensors', 'is not a petbreeds model file')]:
        assert_one_line_error(petbreeds_cmd('serve', model, '--port', free_port(), env=subprocess_env, timeout=300), fragment)
    assert_one_line_error(petbreeds_cmd('serve', demo_model, '--port', server['port'], env=subprocess_env, timeout=300), "can't listen on 127.0.0.1")

SPACE_CHILD = """
import importlib.util, runpy, signal, sys
space, tests, site_dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[:0] = [space, *site_dirs]
sys.path.append(tests); import offline; offline.install()             # loopback only, as in every test
print('petbreeds findable:', importlib.util.find_spec('petbreeds') is not None, flush=True)
def report(*_):                                                        # on the test's terminate(): what did the Space load?
    print('imported:', sorted(m for m in ('petbreeds', 'fastai', 'torch') if m in sys.modules), flush=True); sys.exit(0)
signal.signal(signal.SIGTERM, report)
runpy.run_path(space + '/app.py', run_name='__main__')
"""

def test_space_runs_without_petbreeds_or_torch(demo_model, uploads, tmp_path, subprocess_env):
    from gradio_client import Client
    from petbreeds.export import write_space
    space = write_space(demo_model, tmp_path/'space')
    port = free_port()
    env = {'PATH': subprocess_env['PATH'], 'HOME': str(tmp_path), 'TMPDIR': str(tmp_path), 'GRADIO_SERVER_NAME': '127.0.0.1',
           'GRADIO_SERVER_PORT': str(port), 'GRADIO_ANALYTICS_ENABLED': 'False', 'HF_HUB_OFFLINE': '1'}
    cmd = [sys.executable, '-I', '-S', '-c', SPACE_CHILD, str(space), str(TESTS), *site.getsitepackages()]   # -I -S: no PYTHONPATH, no .pth files
    url = f'http://127.0.0.1:{port}/'
    with running(cmd, url, env=env, cwd=space, log=tmp_path/'space.log'):
        client = Client(url, verbose=False)
        for f in uploads['good'][:2]:
            assert ask(client, f)['labels'][0] == top_label(demo_model, f)
        examples = client.view_api(print_info=False, return_format='dict')
        assert list(examples['named_endpoints']) == ['/classify']
    log = (tmp_path/'space.log').read_text()
    assert 'petbreeds findable: False' in log and 'imported: []' in log, log[-3000:]

def test_export_space_command(subprocess_env, demo_model, tmp_path):
    res = petbreeds_cmd('export', demo_model, '--space', tmp_path/'space', env=subprocess_env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert {p.name for p in (tmp_path/'space').iterdir()} >= {'app.py', 'requirements.txt', 'README.md', 'model.onnx', 'petbreeds_space'}
    assert_one_line_error(petbreeds_cmd('export', demo_model, '--space', tmp_path/'space', env=subprocess_env), 'already exists and is not an empty folder')
