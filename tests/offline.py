"""Refuse every network connection except to the loopback address.

Installed by conftest.py for the test process, and by offline_site/sitecustomize.py for the
subprocesses the tests start (the CLI end to end), so that a test which reaches for the internet
fails at once with `NetworkBlockedError` instead of hanging until a timeout.
"""
import ipaddress
import socket

LOOPBACK_NAMES = {'localhost', 'localhost.localdomain', 'ip6-localhost', 'ip6-loopback'}

class NetworkBlockedError(ConnectionRefusedError):
    "A test tried to reach a host other than this machine"

def is_loopback(host) -> bool:
    if isinstance(host, bytes): host = host.decode()
    host = str(host).strip('[]').lower()
    if host in LOOPBACK_NAMES: return True
    try: return ipaddress.ip_address(host.split('%')[0]).is_loopback
    except ValueError: return False

def _check(address):
    if isinstance(address, tuple) and address and not is_loopback(address[0]):
        raise NetworkBlockedError(f"network access to {address[0]!r} is blocked in petbreeds tests; only loopback is allowed")

_real = {}

def install():
    "Patch `socket` so that only loopback connections and look-ups go through"
    if _real: return
    _real.update(connect=socket.socket.connect, connect_ex=socket.socket.connect_ex, getaddrinfo=socket.getaddrinfo,
                 gethostbyname=socket.gethostbyname)
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6): _check(address)
        return _real['connect'](self, address)
    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6): _check(address)
        return _real['connect_ex'](self, address)
    def getaddrinfo(host, *args, **kwargs):
        if host is not None: _check((host,))
        return _real['getaddrinfo'](host, *args, **kwargs)
    def gethostbyname(host):
        _check((host,))
        return _real['gethostbyname'](host)
    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.getaddrinfo, socket.gethostbyname = getaddrinfo, gethostbyname
