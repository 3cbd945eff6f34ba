"""A peer that half-closes, for spec/flow_spec.lua and the example specs.

usage: python3 py_halfclose.py PORT MODE [ARGS...]

  send N SEED OUT     send N deterministic bytes (SEED), shutdown(SHUT_WR), read
                      to the end of the stream into the file OUT; prints
                      "sent N SHA" and "received M SHA"
  request TEXT OUT    send TEXT (\\r\\n escapes allowed), shutdown(SHUT_WR),
                      read to the end into OUT; prints "received M"
  eof-then-send TEXT  read to the end of the stream (the server half-closed),
                      print "got M bytes", then send TEXT and close
  slow OUT RATE [TEXT]
                      send TEXT if given, then read to the end at about RATE
                      bytes/s into OUT (a client that reads slowly); prints
                      "received M"
  flood TEXT SECONDS  send TEXT over and over for SECONDS without reading (as
                      much as the server takes), print "sent N", then close

Everything is bounded by a 120 s socket timeout.
"""
import hashlib
import socket
import sys
import threading
import time


def blob(n, seed):
    # the same bytes as H.blob in spec/helpers.lua
    x = seed
    chunk = bytearray(4096)
    for i in range(4096):
        x = (x * 1103515245 + 12345) % 2147483648
        chunk[i] = x % 256
    chunk = bytes(chunk)
    return chunk * (n // 4096) + chunk[: n % 4096]


def read_all(s, out=None, rate=None):
    total = 0
    h = hashlib.sha256()
    f = open(out, "wb") if out else None
    start = time.monotonic()
    while True:
        d = s.recv(65536)
        if not d:
            break
        total += len(d)
        h.update(d)
        if f:
            f.write(d)
        if rate:
            ahead = total / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    if f:
        f.close()
    return total, h.hexdigest()


def main():
    port, mode, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    if mode == "send":
        n, seed, out = int(args[0]), int(args[1]), args[2]
        data = blob(n, seed)
        print("sent", n, hashlib.sha256(data).hexdigest(), flush=True)
        # send in a thread while the main thread reads: an echo server's
        # answers must be read for it to go on
        def sender():
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=sender)
        t.start()
        total, digest = read_all(s, out)
        t.join()
        print("received", total, digest, flush=True)
    elif mode == "request":
        text = args[0].replace("\\r", "\r").replace("\\n", "\n").encode()
        s.sendall(text)
        s.shutdown(socket.SHUT_WR)
        total, _ = read_all(s, args[1])
        print("received", total, flush=True)
    elif mode == "eof-then-send":
        total, _ = read_all(s)
        print("got", total, "bytes", flush=True)
        s.sendall(args[0].encode())
        s.close()
    elif mode == "slow":
        if len(args) > 2:
            s.sendall(args[2].replace("\\r", "\r").replace("\\n", "\n").encode())
        total, _ = read_all(s, args[0], float(args[1]))
        print("received", total, flush=True)
    elif mode == "flood":
        text = args[0].replace("\\r", "\r").replace("\\n", "\n").encode() * 64
        s.setblocking(False)
        sent, end = 0, time.monotonic() + float(args[1])
        while time.monotonic() < end:
            try:
                sent += s.send(text)
            except BlockingIOError:
                time.sleep(0.01)
        print("sent", sent, flush=True)
    else:
        sys.exit("unknown mode " + mode)
    s.close()


main()
