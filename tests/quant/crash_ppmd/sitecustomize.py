"""On PYTHONPATH, this makes every Python process's PPMd decoder die of SIGSEGV, as pyppmd 1.3.1's does
on some large payloads (pr754's bit-packed one): a deterministic stand-in for that crash.

Only a process that decodes PPMd in-process dies; paramgolf decodes it in a child process.
"""

import os
import signal

import pyppmd


def _segfault(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGSEGV)


pyppmd.Ppmd7Decoder = _segfault
