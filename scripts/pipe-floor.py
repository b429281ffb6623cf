#!/usr/bin/env python3
"""The floor of reading a pipe: widen standard input's pipe to 1 MiB (F_SETPIPE_SZ, as
vmstate does) and read it 1 MiB at a time into one buffer, doing nothing with the bytes.

usage: cat FILE | scripts/pipe-floor.py
"""
import fcntl
import sys

F_SETPIPE_SZ = 1031
CHUNK = 1 << 20

stdin = sys.stdin.buffer.raw
try:
    fcntl.fcntl(stdin.fileno(), F_SETPIPE_SZ, CHUNK)
except OSError:
    pass  # not a pipe, or a lower limit: read it as it is
buf = memoryview(bytearray(CHUNK))
total = 0
while True:
    n = stdin.readinto(buf)
    if not n:
        break
    total += n
print(total)
