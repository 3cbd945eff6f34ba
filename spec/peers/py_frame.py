"""Reference framing by Python 3.11's asynchat, for comparison with ours.
Reads the stream (hex) and the read size from argv; the protocol: a line
"N\\r\\n" (string terminator) announces N body bytes (integer terminator),
then back to lines; a line "-\\r\\n" switches to no terminator (collect to the
end). Prints one line per event: "C <hex>" for collect_incoming_data and
"F <terminator>" for found_terminator, then "END".
usage: python3 py_frame.py HEXSTREAM IN_BUFFER_SIZE"""
import socket
import sys
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import asynchat
    import asyncore

stream = bytes.fromhex(sys.argv[1])
size = int(sys.argv[2])
out = []


class Framer(asynchat.async_chat):
    ac_in_buffer_size = size

    def __init__(self, sock):
        super().__init__(sock)
        self.line = b""
        self.set_terminator(b"\r\n")

    def collect_incoming_data(self, data):
        out.append("C " + data.hex())
        if isinstance(self.get_terminator(), bytes):
            self.line += data

    def found_terminator(self):
        t = self.get_terminator()
        out.append("F " + (t.hex() if isinstance(t, bytes) else repr(t)))
        if isinstance(t, bytes):
            line, self.line = self.line, b""
            if line == b"-":
                self.set_terminator(None)
            elif line.isdigit():
                self.set_terminator(int(line))
        else:
            self.set_terminator(b"\r\n")

    def handle_close(self):
        out.append("END")
        self.close()


a, b = socket.socketpair()
Framer(a)
b.sendall(stream)
b.close()
asyncore.loop(timeout=0.01, count=len(stream) + 10)
print("\n".join(out))
