"""The chapter notebook's real-data switch: with PETBREEDS_REAL=1 and no network it stops at once with the
clear offline message (the default, synthetic mode is what nbdev_test runs)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]

def test_real_switch_reaches_the_download_and_says_what_to_do(subprocess_env, tmp_path):
    env = {**subprocess_env, 'PETBREEDS_REAL': '1', 'PETBREEDS_HOME': str(tmp_path)}
    nbdev_test = Path(sys.executable).parent/'nbdev_test'
    res = subprocess.run([str(nbdev_test), '--path', 'nbs/08_chapter.ipynb'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "can't reach the Oxford-IIIT Pet archive at https://s3.amazonaws.com/fast-ai-imageclas/oxford-iiit-pet.tgz" in out
    assert '--demo' in out
