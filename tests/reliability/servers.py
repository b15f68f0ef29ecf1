"""Misbehaving servers for the network scenarios: used only where a real remote cannot
produce the fault on cue (a stall mid-body, a trickle, a reset, a 5xx, a redirect, a
flood).

``FaultyFront`` stands in front of a real instance: every request is forwarded and
the real answer returned, except where a rule gives another answer. Unlike
``tests.faultproxy.FaultProxy`` (which rewrites whole answers), an answer here
writes to the socket itself, so that it can stop, stall or reset mid-body, or send
more than the client will read. Every request is recorded with its arrival time,
and the bytes each answer got out.

``Listener`` is a port that records every connection made to it: the "other host"
that a redirect points at.
"""

import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import BaseRequestHandler, ThreadingTCPServer

import requests

STALL_LIMIT = 60  # seconds a stalled answer waits for the client to give up


class Exchange:
    """One request as an answer sees it."""

    def __init__(self, handler, front):
        self.handler = handler
        self.front = front
        self.path = handler.path
        self.sent = 0

    def forward(self):
        """The real instance's answer: (status, headers, body)."""
        upstream = requests.get(
            self.front.upstream + self.path,
            headers={k: v for k, v in self.handler.headers.items() if k.lower() != "host"},
            timeout=120,
        )
        headers = {"Content-Type": upstream.headers.get("Content-Type", "")}
        return upstream.status_code, headers, upstream.content

    def head(self, status, headers):
        self.handler.send_response(status)
        for key, value in headers.items():
            self.handler.send_header(key, str(value))
        self.handler.end_headers()
        self.handler.wfile.flush()

    def write(self, data):
        self.handler.wfile.write(data)
        self.sent += len(data)

    def send(self, status, headers, body):
        self.head(status, {**headers, "Content-Length": len(body)})
        self.write(body)

    def reset(self):
        """Abort the connection with a TCP RST (SO_LINGER 0), not an orderly close."""
        sock = self.handler.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.handler.rfile.close()
        self.handler.wfile.close()
        sock.close()

    def stall(self):
        """Send nothing more until the client gives up (or the front closes)."""
        sock = self.handler.connection
        sock.settimeout(0.1)
        deadline = time.monotonic() + STALL_LIMIT
        while time.monotonic() < deadline and not self.front.closing.is_set():
            try:
                if sock.recv(1024) == b"":
                    return  # the client closed its side
            except TimeoutError:
                continue
            except OSError:
                return


class FaultyFront:
    """A front for the instance at ``upstream`` (its base URL); see the module's docstring."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.rules = []  # [predicate(path), answer(exchange, n)]; n: the nth matching request
        self.requests = []  # (path, time.monotonic() on arrival)
        self.sent = []  # (path, bytes the answer got out)
        self.gate = threading.Lock()  # held by an answer that changes the remote
        self.closing = threading.Event()
        self.lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):
                with front.gate:
                    pass  # wait while an answer changes the remote
                exchange = Exchange(self, front)
                with front.lock:
                    front.requests.append((self.path, time.monotonic()))
                    answer, n = front.match(self.path)
                try:
                    if answer is None:
                        exchange.send(*exchange.forward())
                    else:
                        answer(exchange, n)
                except (BrokenPipeError, ConnectionResetError, ValueError):
                    pass  # the client went away (ValueError: a reset closed the file)
                finally:
                    with front.lock:
                        front.sent.append((self.path, exchange.sent))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def on(self, predicate, answer):
        self.rules.append([predicate, answer, 0])

    def match(self, path):
        for rule in self.rules:
            predicate, answer, _count = rule
            if predicate(path):
                rule[2] += 1
                return answer, rule[2]
        return None, 0

    def sent_to(self, predicate):
        """The bytes of body that each answer to a matching request got out."""
        with self.lock:
            return [sent for path, sent in self.sent if predicate(path)]

    def forget(self):
        """Start the record of requests afresh (e.g. after a first, faultless sync)."""
        with self.lock:
            self.requests.clear()
            self.sent.clear()

    def clear(self):
        """Remove every fault: from now on the front answers as the instance does."""
        with self.lock:
            self.rules.clear()

    def asked(self, predicate):
        """The arrival times of the requests whose path matches."""
        with self.lock:
            return [moment for path, moment in self.requests if predicate(path)]

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


# --- answers: each a function (exchange, n) -> None --------------------------------------------


def first(times, answer):
    """``answer`` for the first ``times`` matching requests, the real answer after."""

    def maybe(exchange, n):
        if n <= times:
            answer(exchange, n)
        else:
            exchange.send(*exchange.forward())

    return maybe


def status(code, headers=None, body=b'{"error": "injected by the test"}'):
    def answer(exchange, n):
        exchange.send(code, {"Content-Type": "application/json", **(headers or {})}, body)

    return answer


def redirect(code, location):
    return status(code, {"Location": location}, b"")


def cut(how):
    """The real answer, announced whole (Content-Length), cut half-way through its
    body: ``how`` is "reset" (a TCP RST) or "stall" (the socket kept open, silent)."""

    def answer(exchange, n):
        code, headers, body = exchange.forward()
        exchange.head(code, {**headers, "Content-Length": len(body)})
        exchange.write(body[: len(body) // 2])
        exchange.handler.wfile.flush()
        if how == "reset":
            exchange.reset()
        else:
            exchange.stall()

    return answer


def trickle(every, between=None):
    """The real answer, announced whole (Content-Length), its body sent one byte every
    ``every`` seconds: every read of the client gets a byte in time, so no read
    timeout ends it, only a deadline. ``between()``, if given, is called about every
    0.2 s while the answer trickles (e.g. to look at the local database meanwhile)."""

    def answer(exchange, n):
        code, headers, body = exchange.forward()
        exchange.head(code, {**headers, "Content-Length": len(body)})
        limit = time.monotonic() + STALL_LIMIT
        for index in range(len(body)):
            exchange.write(body[index : index + 1])
            exchange.handler.wfile.flush()
            pause = time.monotonic() + every
            while time.monotonic() < pause:
                if time.monotonic() > limit or exchange.front.closing.is_set():
                    return
                if between is not None:
                    between()
                time.sleep(0.2)

    return answer


def flood(size, announce):
    """A body of ``size`` bytes, streamed at a pace (so that what it got out is about
    what the client read, not what the kernel's buffers took); its length announced or
    not."""
    line = b'{"model": "hcore.station", "pk": 1, "fields": {"name": "' + b"x" * 900 + b'"}},\n'

    lines = (size - 2) // len(line)

    def answer(exchange, n):
        headers = {"Content-Type": "application/json"}
        if announce:
            headers["Content-Length"] = 2 + lines * len(line)
        exchange.head(200, headers)
        exchange.write(b"[\n")
        for number in range(lines):
            exchange.write(line)
            if number % 64 == 63:  # about 64 KiB a millisecond
                time.sleep(0.001)

    return answer


def rewrite(transform):
    """The real answer, its body passed through ``transform``."""

    def answer(exchange, n):
        code, headers, body = exchange.forward()
        exchange.send(code, headers, transform(body))

    return answer


def after(change):
    """At the first matching request, run ``change()`` (e.g. edit the remote) with
    every request held; then forward, as for every later one."""

    def answer(exchange, n):
        if n == 1:
            with exchange.front.gate:
                change()
        exchange.send(*exchange.forward())

    return answer


# --- another host --------------------------------------------------------------------------


class Listener:
    """A port that counts the connections made to it and answers none."""

    def __init__(self, address):
        self.connections = 0
        listener = self

        class Handler(BaseRequestHandler):
            def handle(self):
                listener.connections += 1

        self.server = ThreadingTCPServer((address, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
