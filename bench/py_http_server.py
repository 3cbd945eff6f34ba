"""The HTTP responder and push server of `make bench`, with Python 3.11's asynchat.
usage: python3 py_http_server.py http|push HOST PORT
http: answers every request head (up to \\r\\n\\r\\n) with the 13-byte "Hello, world!", keep-alive.
push: pushes 256 MiB to each connection, then closes it."""
import sys
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import asynchat
    import asyncore

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\n"
            b"Hello, world!")
PUSH = 256 * 1024 * 1024


class Http(asynchat.async_chat):
    def __init__(self, sock):
        super().__init__(sock)
        self.head = []
        self.set_terminator(b"\r\n\r\n")

    def collect_incoming_data(self, data):
        self.head.append(data)

    def found_terminator(self):
        self.head = []
        self.push(RESPONSE)


class Pusher(asynchat.async_chat):
    def __init__(self, sock):
        super().__init__(sock)
        self.push(b"x" * PUSH)
        self.close_when_done()

    def collect_incoming_data(self, data):
        pass


class Server(asyncore.dispatcher):
    def __init__(self, host, port, handler):
        super().__init__()
        self.handler = handler
        self.create_socket()
        self.set_reuse_addr()
        self.bind((host, port))
        self.listen(1024)

    def handle_accepted(self, sock, addr):
        self.handler(sock)


role, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
Server(host, port, Http if role == "http" else Pusher)
asyncore.loop(use_poll=True)
