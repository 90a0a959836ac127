"""The suite runs offline: a network attempt fails at once, loopback still works."""
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from offline import NetworkBlockedError
from petbreeds.testing import serve_folder

def test_internet_is_refused_at_once():
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen('https://s3.amazonaws.com/fast-ai-imageclas/oxford-iiit-pet.tgz', timeout=60)
    assert isinstance(info.value.reason, NetworkBlockedError)
    assert 'only loopback is allowed' in str(info.value.reason)

def test_raw_socket_to_a_public_address_is_refused():
    with socket.socket() as s, pytest.raises(NetworkBlockedError):
        s.connect(('93.184.216.34', 80))

def test_loopback_still_works(tmp_path):
    (tmp_path/'hello.txt').write_text('hi')
    with serve_folder(tmp_path) as server:
        assert urllib.request.urlopen(server.url + 'hello.txt', timeout=10).read() == b'hi'

def test_subprocesses_are_offline_too(subprocess_env):
    code = "import urllib.request; urllib.request.urlopen('http://example.com', timeout=60)"
    res = subprocess.run([sys.executable, '-c', code], env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert 'NetworkBlockedError' in res.stderr
