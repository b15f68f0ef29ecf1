"""A misbehaving front for a real instance: forwards requests, then breaks answers.

Used where a real remote cannot produce the fault under test (HTTP 500, a body cut
mid-stream, malformed JSON, injected objects). Everything it does not break is the
real instance's real answer.
"""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class FaultProxy:
    def __init__(self, upstream):
        self.upstream = upstream
        self.rules = []  # (predicate(path), action(path, status, headers, body))
        self.requests = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):
                proxy.requests.append(self.path)
                upstream = requests.get(
                    proxy.upstream + self.path,
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                    timeout=60,
                )
                status, body = upstream.status_code, upstream.content
                headers = {"Content-Type": upstream.headers.get("Content-Type", "")}
                for predicate, action in proxy.rules:
                    if predicate(self.path):
                        status, headers, body = action(self.path, status, headers, body)
                if body is None:  # drop the connection without an answer
                    return
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def on(self, predicate, action):
        self.rules.append((predicate, action))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def model_path(model):
    """Predicate: the unfiltered dump of one model (not keys, not re-fetches)."""
    return lambda path: path.split("?")[0] == f"/api/hcore/{model}/" and "pks=" not in path
