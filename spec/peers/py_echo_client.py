"""A Python 3.11 asyncore client: sends SIZE bytes to an echo server, checks
what comes back, prints "OK <bytes>" or "BAD ...".
usage: python3 py_echo_client.py PORT SIZE"""
import hashlib
import sys
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import asyncore

port, size = int(sys.argv[1]), int(sys.argv[2])
payload = bytes((i * 7 + 3) % 251 for i in range(size))


class Client(asyncore.dispatcher_with_send):
    def __init__(self):
        super().__init__()
        self.got = bytearray()
        self.create_socket()
        self.connect(("127.0.0.1", port))
        self.send(payload)

    def handle_connect(self):
        pass

    def handle_read(self):
        self.got += self.recv(65536)
        if len(self.got) >= size:
            self.close()

    def handle_close(self):
        self.close()


c = Client()
asyncore.loop(timeout=0.1, count=2000)
if bytes(c.got) == payload:
    print("OK", len(c.got), flush=True)
else:
    print("BAD", len(c.got), hashlib.md5(c.got).hexdigest(), flush=True)
