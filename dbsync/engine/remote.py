"""The HTTP client of a remote instance's API.

The remote is reached at its IP address (when one is registered) with the Host
header, and for https the certificate check, set to its hostname, as the seed's
note on virtual hosts requires. Transient failures (connection errors, timeouts,
5xx, 429) are retried with exponential backoff, honouring Retry-After; responses
are streamed to disk under a size cap; redirects are never followed, so a remote
cannot send the client, with its credentials, to another host.

Each read waits at most DBSYNC_HTTP_TIMEOUT; each whole response at most
DBSYNC_REQUEST_DEADLINE (a ``watchdog.Watchdog`` ends it), and nothing goes past the
run's deadline (``deadlines.RunDeadline``, when the client is given one): a remote
that trickles its answer fails the run with ``DeadlineExceeded``, which is not retried.
"""

import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode

import requests
from django.conf import settings

from dbsync import __version__

from . import jsoncaps
from .errors import (
    DeadlineExceeded,
    DiskBudgetError,
    PayloadError,
    RemoteError,
    TransientRemoteError,
)
from .request_slots import request_slot
from .watchdog import Watchdog, WatchedAdapter

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 120
CHUNK = 1 << 16


class HostnameTLSAdapter(WatchedAdapter):
    """Connect to an IP address but check the certificate against the hostname."""

    def __init__(self, hostname, **kwargs):
        self.hostname = hostname
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["server_hostname"] = self.hostname
        kwargs["assert_hostname"] = self.hostname
        super().init_poolmanager(*args, **kwargs)


class Received:
    """The bytes of the response bodies that a client and its clones read, counted as
    they arrive (a body cut short counts too): what a run transferred (``--verify`` and
    ``--repair`` report it; a sync logs it at -v 2)."""

    def __init__(self):
        self.bytes = 0
        self.lock = threading.Lock()

    def add(self, size):
        with self.lock:
            self.bytes += size


class RemoteClient:
    def __init__(
        self,
        database,
        port=None,
        timeout=None,
        retries=None,
        backoff=None,
        max_bytes=None,
        budget=None,
        request_deadline=None,
        run_deadline=None,
        received=None,
    ):
        """``run_deadline``: a ``deadlines.RunDeadline`` that no request may pass;
        ``received``: a ``Received`` shared with other clients (else one of its own)."""
        self.database = database
        self.received = received or Received()
        self.budget = budget  # a DiskBudget shared by the clones, or None
        self.port = port or database.port
        self.timeout = timeout if timeout is not None else settings.DBSYNC_HTTP_TIMEOUT
        self.retries = retries if retries is not None else settings.DBSYNC_HTTP_RETRIES
        self.backoff = backoff if backoff is not None else settings.DBSYNC_HTTP_BACKOFF
        self.max_bytes = max_bytes or settings.DBSYNC_MAX_RESPONSE_BYTES
        self.request_deadline = request_deadline or settings.DBSYNC_REQUEST_DEADLINE
        self.run_deadline = run_deadline
        host = database.ip_address or database.hostname
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        self.base = f"{database.scheme}://{host}:{self.port}"
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent()
        self.session.mount("http://", WatchedAdapter())
        self.session.mount("https://", WatchedAdapter())
        self.verify = (settings.DBSYNC_CA_BUNDLE or True) if database.verify_tls else False
        self.session.verify = self.verify
        if database.ip_address and database.hostname:
            self.session.headers["Host"] = (
                database.hostname if self.port in (80, 443) else f"{database.hostname}:{self.port}"
            )
            if database.scheme == "https":
                self.session.mount("https://", HostnameTLSAdapter(database.hostname))
        if self._sends_credentials():
            if database.token:
                self.session.headers["Authorization"] = f"Token {database.token}"
            elif database.username:
                self.session.auth = (database.username, database.password)

    def _sends_credentials(self):
        """Whether the stored password or token go with the requests.

        Not to a port other than the registered one (they were given for that
        endpoint); a RemoteError, before any request, when they may not go (plain
        HTTP, see Database.credentials_refusal) or cannot be decrypted.
        """
        database = self.database
        if not database.has_credentials():
            return False
        if self.port != database.port:
            logger.warning(
                "Remote %s: not sending its stored password or token to port %s: they were "
                "given for its registered port %s (register the new port to send them there)",
                database.name,
                self.port,
                database.port,
            )
            return False
        problem = database.unreadable_secrets_message() or database.credentials_refusal()
        if problem:
            raise RemoteError(problem)
        return True

    def __str__(self):
        return f"{self.database.hostname} ({self.base})"

    def clone(self, **changes):
        """A client of the same remote with its own session (one per thread)."""
        options = {
            "port": self.port,
            "timeout": self.timeout,
            "retries": self.retries,
            "backoff": self.backoff,
            "max_bytes": self.max_bytes,
            "budget": self.budget,
            "request_deadline": self.request_deadline,
            "run_deadline": self.run_deadline,
            "received": self.received,
        }
        return RemoteClient(self.database, **{**options, **changes})

    def url(self, path, params=None):
        if not path.startswith("/"):
            path = "/" + path
        query = f"?{urlencode(params)}" if params else ""
        return f"{self.base}{path}{query}"

    # --- requests with retries ---------------------------------------------------

    def _attempts(self, what, func):
        """Call ``func`` until it succeeds, retrying transient failures.

        Each call holds one of the remote's request slots (dbsync.engine.request_slots) from
        the request until its response is closed; the pause before a retry holds none.
        """
        attempt = 0
        while True:
            try:
                with request_slot(self.database, self.run_deadline):
                    return func()
            except TransientRemoteError as exc:
                attempt += 1
                if attempt > self.retries:
                    raise RemoteError(f"{what}: {exc} (gave up after {attempt} attempts)") from exc
                delay = getattr(exc, "retry_after", None)
                if delay is None:
                    delay = self.backoff * 2 ** (attempt - 1)
                deadline = self.run_deadline
                if deadline is not None and deadline.remaining() < delay:
                    raise DeadlineExceeded(
                        f"{what}: {exc}; not retried: a retry in {delay:.1f} s would pass "
                        f"{deadline.describe()}"
                    ) from exc
                logger.warning(
                    "%s: %s; retry %d of %d in %.1f s", what, exc, attempt, self.retries, delay
                )
                time.sleep(delay)

    @contextmanager
    def _deadline(self, path):
        """The block of one request of ``path``, ended when its deadline passes: the
        request's (DBSYNC_REQUEST_DEADLINE) or, if sooner, the run's. Whatever the
        block then raises (a broken connection, a cut body) becomes DeadlineExceeded."""
        seconds = self.request_deadline
        what = f"DBSYNC_REQUEST_DEADLINE={seconds:g} s"
        if self.run_deadline is not None:
            self.run_deadline.check(f"{self}: GET {path}")
            if self.run_deadline.remaining() < seconds:
                seconds = self.run_deadline.remaining()
                what = self.run_deadline.describe()
        watchdog = Watchdog(seconds)
        read = _Reading(watchdog)  # the block may check it (before taking a body as whole)
        try:
            with watchdog:
                yield read
                read.check()
        except Exception as exc:
            if not watchdog.fired:
                raise
            raise DeadlineExceeded(
                f"{self}: GET {path}: the response did not come whole within {what}; "
                f"the remote is too slow"
            ) from exc

    def _get(self, url):
        try:
            # verify per request: a session's is overridden by REQUESTS_CA_BUNDLE and
            # CURL_CA_BUNDLE from the environment (psf/requests#3829), even when False.
            response = self.session.get(
                url, timeout=self.timeout, stream=True, allow_redirects=False, verify=self.verify
            )
        except requests.exceptions.SSLError as exc:
            raise RemoteError(f"TLS verification failed for {self}: {exc}") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientRemoteError(f"cannot reach {self}: {_reason(exc)}") from exc
        self._check_status(response)
        return response

    def _check_status(self, response):
        status = response.status_code
        if status < 300:
            return
        detail = _error_detail(response)
        response.close()
        if 300 <= status < 400:
            raise RemoteError(
                f"{self} redirected to {response.headers.get('Location', '?')!r}; redirects are "
                f"not followed. Register the remote with the address it redirects to."
            )
        if status in (401, 403):
            raise RemoteError(
                f"{self} refused access (HTTP {status}): check the remote's username/password "
                f"or token."
            )
        if status in RETRY_STATUSES:
            error = TransientRemoteError(f"{self} answered HTTP {status}{detail}")
            error.retry_after = _retry_after(response)
            raise error
        error = RemoteError(f"{self} answered HTTP {status}{detail}")
        error.status = status
        raise error

    def _broken_off(self, exc, size):
        """The transient error of a response that stopped mid-body."""
        reason = _reason(exc)
        if reason == "timed out":
            return TransientRemoteError(
                f"{self} stopped sending mid-response: timed out ({size} bytes read; "
                f"DBSYNC_HTTP_TIMEOUT={self.timeout} s)"
            )
        return TransientRemoteError(
            f"{self} broke the connection mid-response: {reason} ({size} bytes read)"
        )

    def get_json(self, path, params=None):
        url = self.url(path, params)

        def attempt():
            with self._deadline(path):
                response = self._get(url)
                body = self._read_capped(response)
            return jsoncaps.loads(body, f"{self}: {path}")

        return self._attempts(f"GET {path}", attempt)

    def _read_capped(self, response):
        """A body read whole into memory (a JSON document): at most the response cap, and
        DBSYNC_MAX_OBJECT_BYTES, which bounds what a remote can make a sync hold."""
        cap = min(self.max_bytes, settings.DBSYNC_MAX_OBJECT_BYTES)
        setting = (
            "DBSYNC_MAX_RESPONSE_BYTES" if cap == self.max_bytes else "DBSYNC_MAX_OBJECT_BYTES"
        )
        body, size = bytearray(), 0
        try:
            for chunk in response.iter_content(CHUNK):
                size += len(chunk)
                self.received.add(len(chunk))
                if size > cap:
                    raise PayloadError(
                        f"{self}: GET {response.request.path_url}: response larger than the cap "
                        f"of {cap} bytes ({setting})"
                    )
                body += chunk
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise self._broken_off(exc, size) from exc
        finally:
            response.close()
        return body

    def download(self, path, dest, params=None, is_complete=None):
        """Stream a response to ``dest`` (atomically) and return its size in bytes.

        ``is_complete(path)`` tells a whole body from a cut one (a cut one is fetched
        again); by default, a JSON dump's closing bracket.
        """
        is_complete = is_complete or _ends_with_bracket
        url = self.url(path, params)
        tmp = f"{dest}.part"

        def attempt():
            with self._deadline(path) as read:
                return self._download_once(path, url, tmp, dest, is_complete, read)

        try:
            return self._attempts(f"GET {path}", attempt)
        except SyncErrorTypes:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _download_once(self, path, url, tmp, dest, is_complete, read):
        """One request of a download (see ``download``), in its deadline's block."""
        response = self._get(url)
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            response.close()
            raise PayloadError(
                f"{self}: GET {path}: response of {length} bytes is over the cap of "
                f"{self.max_bytes} bytes (DBSYNC_MAX_RESPONSE_BYTES)"
            )
        size = 0
        try:
            with open(tmp, "wb") as out:
                for chunk in response.iter_content(CHUNK):
                    size += len(chunk)
                    self.received.add(len(chunk))
                    if size > self.max_bytes:
                        raise PayloadError(
                            f"{self}: GET {path}: response larger than the cap of "
                            f"{self.max_bytes} bytes (DBSYNC_MAX_RESPONSE_BYTES)"
                        )
                    out.write(chunk)
                    if self.budget is not None:
                        self.budget.spend(len(chunk), f"{self}: GET {path}")
        except (
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            requests.Timeout,
        ) as exc:
            raise self._broken_off(exc, size) from exc
        finally:
            response.close()
        read.check()  # a body the deadline cut is never taken for a whole one
        if not is_complete(tmp):
            raise TransientRemoteError(f"{self}: response truncated after {size} bytes")
        os.replace(tmp, dest)
        return size

    # --- the API -------------------------------------------------------------------

    def manifest(self):
        data = self.get_json(self.database.api_path)
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            raise PayloadError(f"{self}: the API manifest has no list of models")
        try:
            data["server_time"] = datetime.fromisoformat(data["server_time"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError(f"{self}: the API manifest has no valid server_time") from exc
        return data


SyncErrorTypes = (RemoteError, PayloadError, DiskBudgetError)


class _TimeUp(Exception):
    """A body that ended because its deadline shut the socket down."""


class _Reading:
    """One response being read under its ``watchdog``."""

    def __init__(self, watchdog):
        self.watchdog = watchdog

    def check(self):
        """Raise if the deadline has cut the response (its end may look like a whole
        body's: the shut-down socket ends it)."""
        if self.watchdog.fired:
            raise _TimeUp


def user_agent():
    """``dbsync/<version> (+<DBSYNC_CONTACT>)``: who is asking, and how to reach them."""
    contact = settings.DBSYNC_CONTACT.strip()
    return f"dbsync/{__version__} (+{contact})" if contact else f"dbsync/{__version__}"


DNS_FAILURES = (
    "Name or service not known",
    "Temporary failure in name resolution",
    "No address associated with hostname",
    "nodename nor servname provided",
)


def _reason(exc):
    text = str(exc)
    if "Failed to resolve" in text or any(marker in text for marker in DNS_FAILURES):
        detail = next((m for m in DNS_FAILURES if m in text), "no address found")
        return f"its hostname does not resolve ({detail})"
    for marker in ("Connection refused", "timed out", "Connection reset"):
        if marker in text:
            return marker
    return text[:200]


def _error_detail(response):
    try:
        body = response.raw.read(4096, decode_content=True)
        message = json.loads(body).get("error")
        return f": {message}" if message else ""
    except Exception:  # noqa: BLE001 - the detail is a courtesy; the status says enough
        return ""


def _retry_after(response):
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return min(int(value), MAX_RETRY_AFTER)
    try:
        delta = parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None
    return max(0.0, min(delta, MAX_RETRY_AFTER))


def _ends_with_bracket(path):
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64))
        return fh.read().rstrip().endswith(b"]")


def check_api_path(path, remote):
    """Refuse a path of the remote's manifest that is not a path on the remote itself:
    a hostile manifest must not send us (and our credentials) elsewhere."""
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or path.startswith("//")
        or ("://" in path)
    ):
        raise PayloadError(f"{remote}: the manifest names an invalid API path {path!r:.100}")
