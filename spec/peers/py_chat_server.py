"""A Python 3.11 asynchat line server: answers each line upper-cased. Prints "port N"."""
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import asynchat
    import asyncore


class Upper(asynchat.async_chat):
    def __init__(self, sock):
        super().__init__(sock)
        self.buf = []
        self.set_terminator(b"\r\n")

    def collect_incoming_data(self, data):
        self.buf.append(data)

    def found_terminator(self):
        line = b"".join(self.buf)
        self.buf = []
        self.push(line.upper() + b"\r\n")


class Server(asyncore.dispatcher):
    def __init__(self):
        super().__init__()
        self.create_socket()
        self.set_reuse_addr()
        self.bind(("127.0.0.1", 0))
        self.listen(5)

    def handle_accepted(self, sock, addr):
        Upper(sock)


s = Server()
print("port", s.socket.getsockname()[1], flush=True)
asyncore.loop(timeout=0.1)
