"""A peer for spec/stream_spec.lua: prints "port N", accepts one connection,
sends each argument (\\r and \\n escapes allowed) in its own segment 20 ms
apart, then half-closes, reads to the end and prints "got N bytes: REPR".
With --slow RATE it instead reads at about RATE bytes/s to the end and
prints "got N bytes" and the sha256 of what it read. With --reset it sends
the pieces, waits 200 ms, then resets the connection (SO_LINGER 0, close)
and prints "reset".
"""
import hashlib
import socket
import struct
import sys
import time

args = sys.argv[1:]
slow = None
reset = False
if args and args[0] == "--reset":
    reset = True
    args = args[1:]
if args and args[0] == "--slow":
    slow = float(args[1])
    args = args[2:]
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
print("port", ls.getsockname()[1], flush=True)
ls.settimeout(30)
c, _ = ls.accept()
c.settimeout(60)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if slow:
    total, h, start = 0, hashlib.sha256(), time.monotonic()
    while True:
        d = c.recv(65536)
        if not d:
            break
        total += len(d)
        h.update(d)
        ahead = total / slow - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    print("got", total, "bytes", h.hexdigest(), flush=True)
    sys.exit(0)
for a in args:
    c.sendall(a.replace("\\r", "\r").replace("\\n", "\n").encode())
    time.sleep(0.02)
if reset:
    time.sleep(0.2)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    print("reset", flush=True)
    sys.exit(0)
c.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = c.recv(65536)
    if not d:
        break
    got += d
print("got", len(got), "bytes:", repr(got), flush=True)
