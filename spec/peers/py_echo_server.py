"""A Python 3.11 asyncore echo server for interop tests: prints "port N"."""
import sys
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import asyncore


class Echo(asyncore.dispatcher_with_send):
    def handle_read(self):
        data = self.recv(65536)
        if data:
            self.send(data)


class Server(asyncore.dispatcher):
    def __init__(self):
        super().__init__()
        self.create_socket()
        self.set_reuse_addr()
        self.bind(("127.0.0.1", 0))
        self.listen(16)

    def handle_accepted(self, sock, addr):
        Echo(sock)


s = Server()
print("port", s.socket.getsockname()[1], flush=True)
asyncore.loop(timeout=0.1)
