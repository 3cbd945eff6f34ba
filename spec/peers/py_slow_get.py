"""A slow HTTP client for spec/service_spec.lua: GET PATH from 127.0.0.1:PORT,
read the answer at about RATE bytes/s to the end of the stream, and print
"got N bytes SHA256" (of the body). Prints "reading" once the first 64 KiB
of the answer are in.
usage: py_slow_get.py PORT PATH RATE
"""
import hashlib
import socket
import sys
import time

port, path, rate = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
c = socket.create_connection(("127.0.0.1", port), timeout=60)
c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
c.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
data, start, told = b"", time.monotonic(), False
while True:
    d = c.recv(16384)
    if not d:
        break
    data += d
    if not told and len(data) >= 65536:
        print("reading", flush=True)
        told = True
    ahead = len(data) / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
body = data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""
print("got", len(body), "bytes", hashlib.sha256(body).hexdigest(), flush=True)
