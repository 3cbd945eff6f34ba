"""A tiny authoritative DNS server for the specs: UDP on 127.0.0.1, a free port.

  dns_server.py 'JSON'

JSON maps names to what to answer:
  {"one.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
   "slow.test": {"A": ["127.0.0.1"], "delay": 1.5},   # answers late
   "never.test": {"never": true}}                      # never answers
Any other name gets NXDOMAIN. Prints "port N" once, then "query NAME TYPE from
PORT" for every question it receives (the specs read the log: nothing else is
ever asked of anyone).
"""
import json
import socket
import struct
import sys
import threading

TYPES = {1: "A", 28: "AAAA"}


def parse_question(msg):
    i = 12
    labels = []
    while True:
        n = msg[i]
        i += 1
        if n == 0:
            break
        labels.append(msg[i:i + n].decode("ascii", "replace"))
        i += n
    qtype, qclass = struct.unpack("!HH", msg[i:i + 4])
    return ".".join(labels).lower(), qtype, i + 4


def answer(msg, table, peer):
    qid = msg[:2]
    name, qtype, end = parse_question(msg)
    question = msg[12:end]
    entry = table.get(name)
    say("query", name, TYPES.get(qtype, qtype), "from", peer[1])
    if entry is None:
        header = qid + struct.pack("!HHHHH", 0x8583, 1, 0, 0, 0)   # NXDOMAIN, authoritative
        return header + question, 0, False
    if entry.get("never"):
        return None, 0, True
    rrs = b""
    count = 0
    for text in entry.get(TYPES.get(qtype, "?"), []):
        family = socket.AF_INET if qtype == 1 else socket.AF_INET6
        rdata = socket.inet_pton(family, text)
        rrs += struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(rdata)) + rdata
        count += 1
    header = qid + struct.pack("!HHHHH", 0x8580, 1, count, 0, 0)
    return header + question + rrs, entry.get("delay", 0), False


def say(*a):
    print(*a, flush=True)


def main():
    table = {k.lower(): v for k, v in json.loads(sys.argv[1]).items()}
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    say("port", s.getsockname()[1])
    while True:
        msg, peer = s.recvfrom(4096)
        try:
            reply, delay, never = answer(msg, table, peer)
        except (IndexError, struct.error):
            continue
        if never or reply is None:
            continue
        if delay:
            threading.Timer(delay, s.sendto, (reply, peer)).start()
        else:
            s.sendto(reply, peer)


main()
