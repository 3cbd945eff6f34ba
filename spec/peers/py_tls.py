"""A TLS peer for the specs, on Python's ssl module. Prints what it sees, one
line each, and ends with "OK ..." or "FAIL ...".

  py_tls.py server CERT KEY [--alpn A,B] [--cafile CA] [--ragged] [--unwrap]
      one connection: prints "port N", then after the handshake sends
      "hello from python\n", echoes lines back prefixed with "py: ", and on
      "bye" answers "bye\n" and ends: --unwrap waits for our close_notify
      (unwrap()), --ragged closes without one.
  py_tls.py client PORT CAFILE HOSTNAME [--cert C --key K] [--alpn A,B]
      connects, prints the peer's subject, sends "ping\n", prints the answer
      line, then sends "bye\n", waits for the end and unwraps (our close_notify).
  py_tls.py bulk PORT CAFILE HOSTNAME NBYTES
      sends NBYTES while reading the echo back (one thread, non-blocking),
      checks it is intact.
  py_tls.py starttls PORT CAFILE HOSTNAME
      plaintext: reads the greeting, sends "STARTTLS\r\n" and the ClientHello
      in one segment, reads the "220" reply, completes the handshake, sends
      "ping\n" over TLS and prints the answer.
  py_tls.py halfclose PORT CAFILE HOSTNAME
      reads until our close_notify (a TCP end without one is a failure), prints
      "got N", then sends "after the close_notify\n" (TLS 1.3 leaves that
      direction open) and closes with its own close_notify.
  py_tls.py plain PORT
      sends an HTTP request in the clear to a TLS server, prints what it got.
"""
import hashlib
import socket
import ssl
import sys


def arg(name, default=None):
    if name in sys.argv:
        return sys.argv[sys.argv.index(name) + 1]
    return default


def say(*a):
    print(*a, flush=True)


def server(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if arg("--alpn"):
        ctx.set_alpn_protocols(arg("--alpn").split(","))
    if arg("--cafile"):
        ctx.load_verify_locations(arg("--cafile"))
        ctx.verify_mode = ssl.CERT_REQUIRED
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(20)
    say("port", ls.getsockname()[1])
    raw, _ = ls.accept()
    raw.settimeout(20)
    try:
        conn = ctx.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError) as e:
        say("FAIL handshake", type(e).__name__, e)
        return
    say("alpn", conn.selected_alpn_protocol())
    say("sni", getattr(conn, "server_hostname", None))
    conn.sendall(b"hello from python\n")
    f = conn.makefile("rb")
    for line in f:
        if line.strip() == b"bye":
            conn.sendall(b"bye\n")
            break
        conn.sendall(b"py: " + line)
    if "--ragged" in sys.argv:
        conn.shutdown(socket.SHUT_RDWR)   # no close_notify
        conn.close()
        say("OK ragged")
    elif "--unwrap" in sys.argv:
        try:
            conn.unwrap()
            say("OK unwrapped")
        except (ssl.SSLError, OSError) as e:
            say("FAIL unwrap", type(e).__name__, e)
    else:
        conn.close()
        say("OK closed")


def client_ctx(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    if arg("--cert"):
        ctx.load_cert_chain(arg("--cert"), arg("--key"))
    if arg("--alpn"):
        ctx.set_alpn_protocols(arg("--alpn").split(","))
    return ctx


def client(port, cafile, host):
    ctx = client_ctx(cafile)
    raw = socket.create_connection(("127.0.0.1", int(port)), timeout=20)
    try:
        conn = ctx.wrap_socket(raw, server_hostname=host)
    except (ssl.SSLError, OSError) as e:
        say("FAIL handshake", type(e).__name__, e)
        return
    cert = conn.getpeercert()
    say("subject", dict(x[0] for x in cert["subject"]).get("commonName"))
    say("alpn", conn.selected_alpn_protocol())
    try:
        conn.sendall(b"ping\n")
        f = conn.makefile("rb")
        say("answer", f.readline().decode().rstrip("\n"))
        conn.sendall(b"bye\n")
        rest = f.read()   # to the end (our close_notify ends it cleanly)
        say("rest", len(rest))
        conn.unwrap()
        say("OK unwrapped")
    except (ssl.SSLError, OSError) as e:
        say("FAIL", type(e).__name__, e)


def bulk(port, cafile, host, n):
    # one thread, non-blocking: an SSL object must not be used by two threads
    # at once (a writer thread and a reader thread would race inside OpenSSL)
    import selectors
    n = int(n)
    ctx = client_ctx(cafile)
    raw = socket.create_connection(("127.0.0.1", int(port)), timeout=60)
    conn = ctx.wrap_socket(raw, server_hostname=host)
    conn.setblocking(False)
    block = hashlib.sha256(b"seed").digest() * 2048   # 64 KiB
    sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
    left, have = n, 0
    pending = b""
    sel = selectors.DefaultSelector()
    sel.register(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)
    idle = 0
    while have < n:
        events = sel.select(timeout=5)
        if not events:
            idle += 1
            if idle > 12:
                break   # a minute without progress
            continue
        idle = 0
        # read first: the peer echoes, and must not block on us
        try:
            while True:
                d = conn.recv(262144)
                if not d:
                    raise EOFError
                got_hash.update(d)
                have += len(d)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        except EOFError:
            break
        while left > 0 or pending:
            if not pending:
                pending = block[:left]
                sent_hash.update(pending)
                left -= len(pending)
            try:
                k = conn.send(pending)
                pending = pending[k:]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
        if left == 0 and not pending:
            sel.modify(conn, selectors.EVENT_READ)
    if have == n and got_hash.digest() == sent_hash.digest():
        say("OK", have)
    else:
        say("FAIL got", have, "of", n)


def starttls(port, cafile, host):
    ctx = ssl.create_default_context(cafile=cafile)
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=20)
    f = s.makefile("rb", buffering=0)
    greeting = b""
    while not greeting.endswith(b"\n"):
        greeting += s.recv(1)
    say("greeting", greeting.decode().strip())
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=host)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    s.sendall(b"STARTTLS\r\n" + out.read())   # one segment: the line and the ClientHello
    buf = b""
    while b"\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            say("FAIL eof before the reply")
            return
        buf += d
    reply, rest = buf.split(b"\r\n", 1)
    say("reply", reply.decode())
    inc.write(rest)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if out.pending:
                s.sendall(out.read())
            d = s.recv(65536)
            if not d:
                say("FAIL eof in handshake")
                return
            inc.write(d)
    if out.pending:
        s.sendall(out.read())
    obj.write(b"ping\n")
    s.sendall(out.read())
    data = b""
    while b"\n" not in data:
        try:
            data += obj.read(65536)
        except ssl.SSLWantReadError:
            d = s.recv(65536)
            if not d:
                break
            inc.write(d)
    say("answer", data.decode().rstrip("\n"))
    say("OK")


def halfclose(port, cafile, host):
    ctx = client_ctx(cafile)
    raw = socket.create_connection(("127.0.0.1", int(port)), timeout=20)
    try:
        conn = ctx.wrap_socket(raw, server_hostname=host, suppress_ragged_eofs=False)
        n = 0
        while True:
            d = conn.recv(65536)   # b"" at a close_notify; SSLEOFError at a bare FIN
            if not d:
                break
            n += len(d)
        say("got", n)
        conn.sendall(b"after the close_notify\n")
        conn.unwrap()
        raw.close()
        say("OK sent after the close_notify")
    except (ssl.SSLError, OSError) as e:
        say("FAIL", type(e).__name__, e)


def plain(port):
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=20)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    got = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
    except OSError as e:
        say("error", e)
    say("OK closed after", len(got))


cmd = sys.argv[1]
if cmd == "server":
    server(sys.argv[2], sys.argv[3])
elif cmd == "client":
    client(sys.argv[2], sys.argv[3], sys.argv[4])
elif cmd == "bulk":
    bulk(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
elif cmd == "starttls":
    starttls(sys.argv[2], sys.argv[3], sys.argv[4])
elif cmd == "halfclose":
    halfclose(sys.argv[2], sys.argv[3], sys.argv[4])
elif cmd == "plain":
    plain(sys.argv[2])
