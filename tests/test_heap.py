"""The worker's heap keeps large request buffers for the next request instead of faulting them in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sidecar import heap

# Three 10 MB buffers made and freed per "request", as a 10 MB JSON body makes them; the page faults
# of the second request are what every later one would cost.
PROBE = """
import resource, sys
from sidecar import heap
if sys.argv[1] == "keep":
    assert heap.keep_large_buffers()
def request():
    raw = bytearray(10_000_000)
    raw[:] = b"a" * 10_000_000
    text = raw.decode()
    parsed = text[1:]
    return len(parsed)
request()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
request()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_second_large_body_reuses_the_first_ones_pages():
    assert _faults("default") > 2000  # glibc's defaults: buffers mapped and faulted in again
    assert _faults("keep") < 200


def test_a_c_library_without_mallopt_changes_nothing(monkeypatch):
    class NoMallopt:
        def __init__(self, _name):
            pass
    monkeypatch.setattr(heap.ctypes, "CDLL", NoMallopt)
    assert heap.keep_large_buffers() is False


def test_trimming_gives_freed_heap_back():
    probe = ("import ctypes, sys; from sidecar import heap\n"
             "def rss(): return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])\n"
             "blocks = [bytearray(1000) for _ in range(40_000)]; keep = bytearray(1000); del blocks\n"
             "before = rss(); assert heap.trim(); print(before - rss())")
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc_trim")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert int(done.stdout) > 10_000  # KB: most of the 40 MB freed below the block still held
