# Put on PYTHONPATH by the tests for the subprocesses they start: no network but loopback there either.
import os, sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import offline
offline.install()
