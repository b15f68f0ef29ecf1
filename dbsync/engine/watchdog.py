"""A deadline for a whole response: a timer that shuts the request's socket down when
it passes.

The read timeout (``DBSYNC_HTTP_TIMEOUT``) bounds each read, but a remote that sends a
byte every few seconds never lets one time out, whether in the headers, a chunk's
size line or the body; and a blocking read cannot be told to stop from its own
thread. So a ``Watchdog`` is armed around each request: the client's connections
hand it their socket as the request waits for its answer (``WatchedAdapter``), and
when the time is up it shuts the socket down, which ends a read blocked on it at
once. The client then sees ``fired`` and reports the deadline rather than the broken
connection that it caused.
"""

import socket
import threading

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()  # the watchdog of the request this thread is making


class Watchdog:
    """``with Watchdog(seconds) as watch:`` one request, made in this thread; after the
    block, ``watch.fired`` tells whether the time ran out."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.fired = False
        self._sock = None
        self._done = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True

    def __enter__(self):
        _current.watchdog = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info):
        with self._lock:
            self._done = True  # the socket may go back to the pool: never shut it now
        self._timer.cancel()
        _current.watchdog = None
        return False

    def attach(self, sock):
        with self._lock:
            self._sock = sock
            if self.fired and not self._done:
                _shutdown(sock)

    def _fire(self):
        with self._lock:
            if self._done:
                return
            self.fired = True
            if self._sock is not None:
                _shutdown(self._sock)


def _shutdown(sock):
    # socket.socket's own shutdown, also for a TLS socket: it ends a read blocked in
    # another thread (SSLSocket's would first drop the TLS state under that read).
    if isinstance(sock, socket.socket):
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


class _Watched:
    """A connection that hands its socket to this thread's watchdog, if any, as the
    request waits for its answer (the request is sent by then)."""

    def getresponse(self, *args, **kwargs):
        watchdog = getattr(_current, "watchdog", None)
        if watchdog is not None and self.sock is not None:
            watchdog.attach(self.sock)
        return super().getresponse(*args, **kwargs)


class WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


WATCHED_POOLS = {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter, its connections watched (see the module's docstring)."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = WATCHED_POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS has connection classes of its own
            manager.pool_classes_by_scheme = WATCHED_POOLS
        return manager
