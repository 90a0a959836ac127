"""The `petbreeds` command end to end, as a user runs it: real subprocesses, offline."""
import subprocess
import sys
from pathlib import Path

import petbreeds

BIN = Path(sys.executable).parent

def petbreeds_cmd(*args, env, cwd=None, timeout=600):
    return subprocess.run([str(BIN/'petbreeds'), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)

def assert_one_line_error(res, *fragments):
    "Exit code 2, exactly one line on stderr naming the problem, no traceback"
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert 'Traceback' not in res.stderr
    for f in fragments: assert f in lines[0], (f, lines[0])

def test_console_script_and_python_m_agree(subprocess_env):
    a = petbreeds_cmd('--version', env=subprocess_env)
    b = subprocess.run([sys.executable, '-m', 'petbreeds', '--version'], env=subprocess_env, capture_output=True, text=True)
    assert a.returncode == b.returncode == 0
    assert a.stdout.strip() == b.stdout.strip() == f'petbreeds {petbreeds.__version__}'

def test_unknown_subcommand_is_one_line(subprocess_env):
    assert_one_line_error(petbreeds_cmd('fly', env=subprocess_env), "invalid choice: 'fly'", '--help')

def test_every_out_that_is_a_file_is_one_line_and_the_file_is_left_alone(subprocess_env, tmp_path):
    "Every subcommand's --out names a folder: a file there, or a path under one, is refused before any work"
    file = tmp_path/'notes.txt'
    file.write_text('mine')
    commands = (['train', '--demo'], ['lr-find', '--demo'], ['evaluate', tmp_path/'model.safetensors'],
                ['explain', tmp_path/'model.safetensors', tmp_path/'pug_1.jpg'])
    for cmd in commands:
        assert_one_line_error(petbreeds_cmd(*cmd, '--out', file, env=subprocess_env, cwd=tmp_path),
                              f"petbreeds {cmd[0]}: error: argument --out: '{file}' is a file, not a", 'folder: name a new folder')
        assert_one_line_error(petbreeds_cmd(*cmd, '--out', file/'run', env=subprocess_env, cwd=tmp_path),
                              f"'{file}', which is a file")
    assert file.read_text() == 'mine'
    assert [p.name for p in tmp_path.iterdir() if p.name != 'petbreeds_home'] == ['notes.txt']   # and nothing was written beside it
