"""The echo server of `make bench`, written with Python 3.11's asyncore: the
design lua-asyncore ports, as the yardstick. The interop spec talks to it too.
usage: python3 py_echo_server.py HOST PORT   (PORT 0: any free port; prints "port N")"""
import sys
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import asyncore


class EchoHandler(asyncore.dispatcher_with_send):
    def handle_read(self):
        data = self.recv(65536)
        if data:
            self.send(data)


class EchoServer(asyncore.dispatcher):
    def __init__(self, host, port):
        super().__init__()
        self.create_socket()
        self.set_reuse_addr()
        self.bind((host, port))
        self.listen(1024)

    def handle_accepted(self, sock, addr):
        EchoHandler(sock)


server = EchoServer(sys.argv[1], int(sys.argv[2]))
print("port", server.socket.getsockname()[1], flush=True)
asyncore.loop()
