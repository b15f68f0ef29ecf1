"""API abuse: every URL of a real instance over HTTP, attacked; and secrets kept.

A real instance (its own PostgreSQL database, gunicorn on loopback) with sample data,
user accounts with known passwords and profiles, records and files. Every URL is
enumerated from ``api/urls.py`` and the instance's manifest, then:

- asked with bad parameters, bad paths and write methods: each answer is a JSON error
  with the right 4xx status, quickly (a hang fails on the socket's timeout), and the
  instance's database is unchanged;
- asked without valid credentials when the instance is private (token or basic): 401
  and nothing of the data;
- crawled whole: no answer reveals an account, a profile, an e-mail or a password hash.

Requests are written with ``http.client``, byte for byte as given (``requests`` would
resolve ``../`` before sending). The last scenarios sync private remotes and look for
their credentials in everything a run leaves behind.
"""

import base64
import hashlib
import http.client
import io
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import pytest
from django.conf import settings
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import URLPattern

from api.urls import urlpatterns
from dbsync.models import Database, SyncRun
from tests.instance import ROOT, Instance, free_port

TIMEOUT = 60  # seconds a request may take before it counts as a hang
SLOW = 20  # seconds: an answer slower than this is a failure too (2 loaded cores)
PARALLEL = 8  # requests at once: the instance's 2 workers x 4 threads
TOKEN = "tok-3e8Qz1LmW9vB7xR2kP5s"
PASSWORD = "pw-Vx7#Kq2!mZ9^tL4s"

# Accounts of the instance: every value is unique, so that any trace of it is a leak.
ACCOUNTS = [
    {
        "username": "acct.admin.k2v9",
        "email": "root.k2v9@private.example",
        "password": "Adm1n-k2v9-s3cret",
        "superuser": True,
        "profile": {
            "fname": "Adminfname9k2",
            "lname": "Adminlname9k2",
            "address": "1 Secret Row k2v9",
            "organization": "Hidden Org k2v9",
        },
    },
    {
        "username": "acct.reader.q7x1",
        "email": "reader.q7x1@private.example",
        "password": "Re4der-q7x1-s3cret",
        "profile": {
            "fname": "Readerfname1q7",
            "lname": "Readerlname1q7",
            "address": "2 Quiet Lane q7x1",
            "organization": "Private Bureau q7x1",
        },
    },
    {
        "username": "acct.retired.z3c8",
        "email": "retired.z3c8@private.example",
        "password": "Ret1red-z3c8-s3cret",
        "active": False,
        "profile": {"fname": "Retiredfname8z3", "address": "3 Gone Street z3c8"},
    },
]
CREATE_ACCOUNTS = """
import json
from django.contrib.auth import get_user_model
from hcore.models import Station, UserProfile
users = get_user_model().objects
stations = list(Station.objects.order_by("pk"))
for n, a in enumerate(json.loads({accounts!r})):
    make = users.create_superuser if a.get("superuser") else users.create_user
    user = make(a["username"], a["email"], a["password"], is_active=a.get("active", True))
    UserProfile.objects.create(user=user, **a["profile"])
    # Keys to accounts (never served) from some stations.
    Station.objects.filter(pk=stations[n].pk).update(creator=user)
    stations[n + 1].maintainers.add(user)
"""


# --- HTTP, byte for byte ------------------------------------------------------------------


@dataclass
class Answer:
    method: str
    status: int
    headers: dict  # lower-case names
    body: bytes
    seconds: float

    @property
    def text(self):
        return (
            "\n".join(f"{k}: {v}" for k, v in self.headers.items())
            + "\n"
            + self.body.decode("utf-8", "replace")
        )


def ask(instance, target, method="GET", headers=(), body=None):
    """One request as given (``target`` already %-encoded); ``headers`` is a list of
    (name, value) pairs, so that a header may be repeated."""
    conn = http.client.HTTPConnection("127.0.0.1", instance.port, timeout=TIMEOUT)
    started = time.monotonic()
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        content = response.read()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        seconds = time.monotonic() - started
        return Answer(method, response.status, answer_headers, content, seconds)
    finally:
        conn.close()


def query(pairs):
    """A query string, every byte %-encoded (NUL as %00, UTF-8 as %CF%83) but unreserved
    characters and the list separators ``,`` and ``:`` (so that 1,001 keys fit in it)."""
    return "?" + urlencode(pairs, quote_via=quote, safe=",:")


def ask_all(instance, requests_):
    """[(case, Answer)] of many (case, target, method, headers) at once."""

    def one(item):
        case, target, method, headers = item
        try:
            return case, ask(instance, target, method, headers)
        except (OSError, http.client.HTTPException) as exc:  # a hang too, or a cut body
            return case, exc

    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(one, requests_))


def json_error_problem(answer, status, *words):
    """Why ``answer`` is not a JSON error ``status`` naming ``words``; None if it is."""
    if isinstance(answer, Exception):
        return f"no answer: {answer!r}"
    if answer.status != status:
        return f"HTTP {answer.status}, not {status}: {answer.body[:200]!r}"
    if answer.headers.get("content-type") != "application/json":
        return f"Content-Type {answer.headers.get('content-type')!r}: {answer.body[:200]!r}"
    if answer.method == "HEAD":
        return f"a body to a HEAD: {answer.body[:200]!r}" if answer.body else None
    try:
        parsed = json.loads(answer.body)
    except ValueError:
        return f"not JSON: {answer.body[:200]!r}"
    if set(parsed) != {"error"} or not isinstance(parsed["error"], str):
        return f"not an error object: {answer.body[:200]!r}"
    missing = [word for word in words if word not in parsed["error"]]
    if missing:
        return f"the error does not name {missing}: {parsed['error'][:200]!r}"
    if b"Traceback" in answer.body or answer.seconds > SLOW:
        return f"a traceback, or {answer.seconds:.1f} s"
    return None


def assert_all(problems):
    problems = [f"{case}: {problem}" for case, problem in problems if problem]
    assert not problems, f"{len(problems)} bad answers:\n" + "\n".join(problems[:40])


# --- the instance and its URLs --------------------------------------------------------------


def instance_state(instance):
    """{table: (rows, md5 of every row)} of the instance's whole database."""
    tables = [
        name
        for (name,) in instance.sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
    ]
    return {
        table: tuple(
            instance.sql(
                f"SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) "
                f'FROM "{table}" t'
            )[0]
        )
        for table in tables
    }


def assert_state_unchanged(instance, before):
    after = instance_state(instance)
    changed = sorted(t for t in set(before) | set(after) if before.get(t) != after.get(t))
    assert not changed, f"the instance's database changed: {changed}"


def populate(instance, stations=12):
    instance.generate(stations=stations, seed=17, files_per_station=0.5, records_per_series=12)
    instance.shell(CREATE_ACCOUNTS.format(accounts=json.dumps(ACCOUNTS)))


@pytest.fixture(scope="module")
def public(instance_template):
    """A public instance with data, accounts, records and files; never changed."""
    instance = Instance(instance_template, hostname="abuse.example.org")
    populate(instance)
    instance.start()
    yield instance
    instance.drop()


@dataclass(frozen=True)
class Endpoint:
    """An API URL: the route of ``api/urls.py`` it is, and a valid value per parameter."""

    route: str
    path: str
    params: dict = field(default_factory=dict)

    def __str__(self):
        if "fmt" in self.params:  # the records' route as a file: a case of its own
            return f"{self.path} (fmt={self.params['fmt']})"
        return self.path

    @property
    def target(self):
        """The URL with a valid value of every parameter."""
        return self.path + (query(list(self.params.items())) if self.params else "")


def catalogue(instance, headers=()):
    """Every API URL of ``instance``, from its manifest, with real keys."""
    answer = ask(instance, "/api/", headers=headers)
    assert answer.status == 200, answer.body[:300]
    manifest = json.loads(answer.body)
    dump_params = {"modified_after": "2001-01-01T00:00:00", "pks": "1", "after": "0", "limit": "5"}
    endpoints = [Endpoint("manifest", "/api/")]
    for entry in manifest["models"]:
        endpoints.append(Endpoint("dump", entry["url"], dump_params))
        endpoints.append(Endpoint("keys", entry["keys_url"]))
        checksum_params = {"from": "0", "to": "5000", "parts": "4"}
        endpoints.append(Endpoint("checksums", entry["checksums_url"], checksum_params))
        endpoints.append(
            Endpoint(
                "hashes",
                entry["hashes_url"],
                {"from": "0", "to": "50", "after": "2001-01-01T00:00:00"},
            )
        )
        # --verify's on a capture cursor (protocol 3).
        endpoints.append(
            Endpoint("hashes", entry["hashes_url"], {"ranges": "1-2,4-9", "changed_since": "0"})
        )
    series = instance.sql("SELECT min(timeseries_id) FROM hcore_record")[0][0]
    gentityfile = instance.sql("SELECT min(id) FROM hcore_gentityfile WHERE content <> ''")[0][0]
    assert series and gentityfile, "the instance has no records or no files"
    time_zone = instance.sql("SELECT min(id) FROM hcore_timezone")[0][0]
    records, files = manifest["records"], manifest["files"]
    endpoints += [
        Endpoint("records-summary", records["summary_url"]),
        Endpoint("records-batch", records["batch_url"], {"series": str(series)}),
        Endpoint(
            "records",
            records["url"].format(pk=series),
            {"start_date": "2025-12-31", "end_date": "2025-12-31 23:50"},
        ),
        # The same route as a file for people (api/record_formats.py).
        Endpoint(
            "records",
            records["url"].format(pk=series),
            {"start_date": "2025-12-31", "end_date": "2025-12-31 23:50", "fmt": "hts"},
        ),
        Endpoint("file-listing", files["listing_url"], {"changed_since": "0"}),
        Endpoint("file-content", files["url"].format(pk=gentityfile)),
        # The 2010 layout (api/legacy.py): it takes no parameters.
        Endpoint("legacy-listing", "/api/Station/"),
        Endpoint("legacy-listing", "/api/TimeZone/"),
        Endpoint("legacy-detail", f"/api/TimeZone/{time_zone}/"),
        Endpoint("legacy-tsdata", f"/api/tsdata/{series}/"),
    ]
    return endpoints


def test_the_catalogue_covers_every_route_of_the_api(public):
    """Every route of api/urls.py is in the sweeps (the catch-all in the path sweep), so
    an endpoint added later is attacked too, or this fails."""
    routes = {p.name for p in urlpatterns if isinstance(p, URLPattern)}
    covered = {endpoint.route for endpoint in catalogue(public)} | {"not-found"}
    assert routes == covered
    for endpoint in catalogue(public):
        answer = ask(public, endpoint.target)
        assert answer.status == 200, (endpoint, answer.body[:200])


# --- bad parameters -----------------------------------------------------------------------

# Refused as a value of any parameter.
BAD_VALUES = [
    "abc",
    "1.5",
    "true",
    "[1]",
    "",
    " 1",
    "99999999999999999999",
    "1;DROP TABLE hcore_station",
    "' OR 1=1 --",
    "1) OR (1=1",
    "١٢٣",  # Arabic-Indic digits: int() takes them
    "２",  # a fullwidth digit
    "σταθμός 😀",
    "1\x00",
    "\x00",
    "9" * 3000,  # long, but under gunicorn's 4094-byte request line: the API answers
    "σ" * 500,
]
# Refused for one parameter only (other values of these are valid elsewhere).
BAD_FOR = {
    "limit": ["0", "-1", str(10**12), "100001"],
    "after": [str(-(2**63) - 1), str(2**63)],
    "pks": ["1,,2", "1,", ",".join(["1"] * 1001), "-1-2"],
    "modified_after": ["0", "-1", "2001-02-30T00:00:00", "2025-01-01T00:00:00+25:00"],
    "start_date": ["0", "2025-13-01", "2025-01-01T00:00:00+25:00", "2026-01-02"],
    "end_date": ["0", "2025-12-32", "2025-01-01 24:01"],
    "fmt": ["xml", "hts3", "json", "hts ", "html"],
    "series": [
        "-1",
        "1,1",
        "1:",
        ":1",
        "1:1:1",
        "1:999999999999999999",
        "1:-99999999999999999",
        "1:253402300799999999",
    ],
    "from": ["-1", str(2**63), "5001"],
    "to": ["-1", str(2**63)],
    "parts": ["0", "-1", "257", "²"],
    "changed_since": ["-1", str(2**63), "1.5"],
    "ranges": ["1-", "5-3", "1-2-3", ",".join(["1-2"] * 65)],
}
# Odd but valid: answered with a whole body.
ODD_BUT_VALID = {
    "limit": ["1", "100000"],
    "after": ["-1", "0", str(2**63 - 1)],
    "pks": ["-1", "0", str(2**63 - 1), "3,1,3"],
    "modified_after": [
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+23:59",
        "2001-01-01T00:00:00 00:00",
    ],
    "start_date": ["0001-01-01", "0001-01-01 00:00", "0001-01-01T00:00:00+23:59"],
    "end_date": ["9999-12-31", "9999-12-31 23:59", "9999-12-31T23:59:59.999999-23:59"],
    "fmt": ["HTS", "hts2", "Csv"],
    "series": ["0", "1:0", "1:253402300799999998", "1:-62135596800000000", "2,1"],
    "from": ["0", "50"],
    "to": ["50", "0050"],
    "parts": ["1", "256"],
    "changed_since": ["0", str(2**63 - 1)],
    "ranges": ["0-0", f"0-{2**63 - 1}", "3-5,1-2"],
}
# The same name, another kind of value: the hashes' ``after`` is a time, as a dump's
# ``modified_after`` is (a dump's ``after`` is a key).
KIND = {("hashes", "after"): "modified_after"}


def parameter_cases(endpoint):
    """(case, query pairs, expected status, words the error must name) of an endpoint."""
    valid = list(endpoint.params.items())
    cases = [
        ("unknown parameter", valid + [("format", "xml")], 400, ["'format'"]),
        ("SQL as a name", valid + [("1=1;DROP TABLE auth_user", "1")], 400, ["Unknown"]),
        ("NUL as a name", valid + [("\x00", "1")], 400, ["Unknown"]),
        ("unicode name", valid + [("σειρά", "1")], 400, ["Unknown"]),
    ]
    for name, value in valid:
        cases.append((f"{name} twice", valid + [(name, value)], 400, [name, "more than once"]))
        others = [(n, v) for n, v in valid if n != name]
        kind = KIND.get((endpoint.route, name), name)
        for bad in BAD_VALUES + BAD_FOR[kind]:
            cases.append((f"{name}={bad[:30]!r}", others + [(name, bad)], 400, [name]))
        for odd in ODD_BUT_VALID[kind]:
            cases.append((f"{name}={odd!r}", others + [(name, odd)], 200, []))
    if endpoint.route == "records-batch":
        cases.append(("series missing", [], 400, ["series"]))
    return cases


def whole_body_problem(endpoint, answer):
    """Why a 200 answer is not a whole, well-formed body; None if it is."""
    if isinstance(answer, Exception) or answer.status != 200:
        return json_error_problem(answer, 200)
    body = answer.body
    if "fmt" in endpoint.params:
        return records_file_problem(body)
    if endpoint.route in ("records", "records-batch"):
        last = body.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        if not (last.startswith(b"# end count=") or last.endswith(b" not found")):
            return f"records cut short: ends {body[-80:]!r}"
        return None
    if endpoint.route == "file-content":
        sha = hashlib.sha256(body).hexdigest()
        return None if answer.headers.get("x-content-sha256") == sha else "checksum differs"
    try:
        json.loads(body)
    except ValueError:
        return f"not JSON: ends {body[-80:]!r}"
    return None


def records_file_problem(body):
    """Why a body of ``fmt=hts``, ``hts2`` or ``csv`` is not whole; None if it is: the
    HTS header's Count is the number of lines that follow, every line ends in CR LF."""
    if body and not body.endswith(b"\r\n"):
        return f"records file cut short: ends {body[-80:]!r}"
    if not body or body[:1].isdigit():  # csv: the records alone
        return None
    header, blank, records = body.partition(b"\r\n\r\n")
    count = [line for line in header.split(b"\r\n") if line.startswith(b"Count=")]
    if not blank or len(count) != 1:
        return f"not an HTS file: starts {body[:200]!r}"
    lines = records.count(b"\r\n")
    if int(count[0][6:]) != lines:
        return f"{count[0]!r} but {lines} records"
    return None


def test_bad_parameters_on_every_url_are_json_400_and_change_nothing(public):
    """Wrong types, negative, zero and huge numbers, unknown and repeated parameters,
    long values, SQL, unicode and NUL, on every URL: a JSON 400 naming the parameter;
    odd but valid values a whole body; never a 500, a traceback or a hang."""
    before = instance_state(public)
    requests_, expected = [], {}
    for endpoint in catalogue(public):
        for case, pairs, status, words in parameter_cases(endpoint):
            key = f"{endpoint} {case}"
            requests_.append((key, endpoint.path + (query(pairs) if pairs else ""), "GET", ()))
            expected[key] = (endpoint, status, words)
    answers = ask_all(public, requests_)
    assert len(answers) > 2000
    problems = []
    for key, answer in answers:
        endpoint, status, words = expected[key]
        if status == 200:
            problems.append((key, whole_body_problem(endpoint, answer)))
        else:
            problems.append((key, json_error_problem(answer, status, *words)))
    assert_all(problems)
    assert_state_unchanged(public, before)


def test_more_query_fields_than_django_parses_is_a_json_400(public):
    """1,001 query parameters (DATA_UPLOAD_MAX_NUMBER_FIELDS is 1,000) fit in a request
    line; Django refuses to parse them, which must be the client's 400, not a 500."""
    before = instance_state(public)
    target = "?" + "&".join(["a=1"] * 1001)
    answers = ask_all(public, [(e, e.path + target, "GET", ()) for e in catalogue(public)])
    assert_all((case, json_error_problem(a, 400, "parameters")) for case, a in answers)
    assert_state_unchanged(public, before)


def test_a_100_kb_value_is_refused_at_once(public):
    """A 100 KB value on every URL: refused by the HTTP server (gunicorn's request line
    is at most 4094 bytes) with a 4xx before the application sees it; quick, no trace."""
    before = instance_state(public)
    requests_ = []
    for endpoint in catalogue(public):
        name = next(iter(endpoint.params), "x")
        requests_.append((endpoint, endpoint.path + query([(name, "9" * 100_000)]), "GET", ()))
        requests_.append((endpoint, endpoint.path + query([(name, "σ" * 50_000)]), "GET", ()))
    problems = []
    for case, answer in ask_all(public, requests_):
        if isinstance(answer, Exception):
            problems.append((case, f"no answer: {answer!r}"))
        elif answer.status not in (400, 414) or b"Traceback" in answer.body:
            problems.append((case, f"HTTP {answer.status}: {answer.body[:200]!r}"))
        elif answer.seconds > SLOW:
            problems.append((case, f"{answer.seconds:.1f} s"))
    assert_all(problems)
    assert_state_unchanged(public, before)


# --- bad paths and methods ------------------------------------------------------------------

UNSERVED = [
    "auth/user",
    "auth/group",
    "auth/permission",
    "hcore/userprofile",
    "sessions/session",
    "admin/logentry",
    "contenttypes/contenttype",
    "dbsync/database",
    "dbsync/syncrun",
    "django_celery_beat/periodictask",
    "hcore/record",
    "hcore/recordssummary",
    "hcore/recordssyncstate",
    "hcore/station_maintainers",
    "hcore/nosuchmodel",
    "nosuchapp/station",
    "HCORE/station",
    "hcore%00/station",
    "hcore/station%00",
    "hcore/%CF%83%CF%84%CE%B1%CE%B8%CE%BC%CF%8C%CF%82",
    "hcore/%ff%fe",
]
BAD_KEYS = ["0", "99999999999999999999", "-1", "1.5", "%00", "%D9%A1", "..%2F..%2Fetc%2Fpasswd"]
# Appended to a URL: traversal, raw and encoded, NUL, and more segments.
BAD_SUFFIXES = ["../", "../../../etc/passwd/", "%2e%2e/", "..%2F..%2Fauth%2Fuser/", "%00/", "x/"]


def path_cases(endpoints):
    cases = []
    for path in UNSERVED:
        for suffix in ("", "keys/", "?limit=1&after=0"):
            cases.append(f"/api/{path}/{suffix}")
    for key in BAD_KEYS:
        cases.append(f"/api/hcore/timeseries/{key}/records/")
        cases.append(f"/api/hcore/gentityfile/{key}/content/")
    for endpoint in endpoints:
        cases += [endpoint.path + suffix for suffix in BAD_SUFFIXES]
    cases += ["/api//", "/api/hcore/", "/api/a/b/c/d/", "/api/" + "a" * 3000 + "/"]
    return cases


def test_bad_paths_on_every_url_are_json_404(public):
    """Path traversal (raw and %-encoded), NUL, unicode, bad keys, unknown and private
    models and apps, extra segments: a JSON 404; nothing served, nothing changed."""
    before = instance_state(public)
    cases = path_cases(catalogue(public))
    answers = ask_all(public, [(path, path, "GET", ()) for path in cases])
    assert_all((path, json_error_problem(answer, 404)) for path, answer in answers)
    assert_state_unchanged(public, before)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_write_methods_on_every_url_are_json_405_and_change_nothing(public, method):
    """The API is read-only: any other method, with a body that looks like data, is a
    JSON 405 on every URL, and the instance's database is unchanged."""
    before = instance_state(public)
    body = json.dumps([{"model": "hcore.station", "pk": 1, "fields": {"name": "x"}}]).encode()
    answers = []
    for endpoint in catalogue(public):
        answers.append((endpoint, ask(public, endpoint.path, method, body=body)))
    assert_all((e, json_error_problem(a, 405, method)) for e, a in answers)
    assert all(a.headers.get("allow") == "GET, HEAD" for _, a in answers)
    assert_state_unchanged(public, before)


# --- private instances ----------------------------------------------------------------------


def basic(username, password):
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def private_instance(make_instance, mode, hostname="private.example.org"):
    settings_ = {"API_AUTH": mode, "API_TOKENS": f"another-token,{TOKEN}"}
    instance = make_instance(hostname=hostname, **settings_)
    populate(instance, stations=4)
    instance.shell(
        "from django.contrib.auth import get_user_model\n"
        f"get_user_model().objects.create_user('syncer', password={PASSWORD!r})\n"
    )
    return instance.start()


def data_markers(instance):
    """Strings of the instance's data that a refused answer must not hold."""
    names = [name for (name,) in instance.sql("SELECT name FROM hcore_gentity WHERE name <> ''")]
    return ["hcore.", '"pk"', "# end count", *names]


def refused_problem(answer, scheme, markers, secrets):
    problem = json_error_problem(answer, 401)
    if problem:
        return problem
    if not answer.headers.get("www-authenticate", "").startswith(scheme):
        return f"WWW-Authenticate is {answer.headers.get('www-authenticate')!r}"
    leaked = [m for m in markers + secrets if m in answer.text]
    return f"the answer holds {leaked[:5]}" if leaked else None


def assert_every_url_refuses(instance, endpoints, variants, scheme, secrets, methods):
    markers = data_markers(instance)
    unserved = [Endpoint("not-found", "/api/auth/user/"), Endpoint("not-found", "/api/x/y/z/")]
    requests_ = []
    for endpoint in endpoints + unserved:
        for label, headers in variants:
            for method in methods:
                case = f"{method} {endpoint} [{label}]"
                requests_.append((case, endpoint.target, method, headers))
    answers = ask_all(instance, requests_)
    assert_all((case, refused_problem(a, scheme, markers, secrets)) for case, a in answers)


def test_private_token_instance_refuses_every_url_without_the_token(make_instance):
    """API_AUTH=token: no header, a wrong, cut or padded token, another scheme, a
    malformed or repeated header, on every URL (GET and HEAD): 401, a token challenge,
    and nothing of the data; the right token reads everything."""
    instance = private_instance(make_instance, "token")
    good = [("Authorization", f"Token {TOKEN}")]
    endpoints = catalogue(instance, headers=good)
    for endpoint in endpoints:
        assert ask(instance, endpoint.target, headers=good).status == 200, endpoint
    before = instance_state(instance)
    variants = [
        ("none", []),
        ("empty", [("Authorization", "")]),
        ("scheme only", [("Authorization", "Token")]),
        ("wrong", [("Authorization", "Token not-the-token")]),
        ("cut", [("Authorization", f"Token {TOKEN[:-1]}")]),
        ("longer", [("Authorization", f"Token {TOKEN}x")]),
        ("case", [("Authorization", f"Token {TOKEN.upper()}")]),
        ("twice", [("Authorization", f"Token {TOKEN} {TOKEN}")]),
        ("no scheme", [("Authorization", TOKEN)]),
        ("basic", [("Authorization", basic("syncer", TOKEN))]),
        ("tab", [("Authorization", f"Token\t{TOKEN}")]),
        ("non-ASCII", [("Authorization", "Token σύμβολο".encode())]),
        ("4 KB", [("Authorization", "Token " + "x" * 4000)]),
        ("two headers", [("Authorization", "Token wrong"), ("Authorization", f"Token {TOKEN}")]),
        ("other header", [("X-Api-Token", TOKEN), ("Cookie", f"token={TOKEN}")]),
    ]
    assert_every_url_refuses(instance, endpoints, variants, "Token ", [TOKEN], ("GET", "HEAD"))
    # The token in the query string is not a credential either.
    answer = ask(instance, "/api/" + query([("token", TOKEN)]))
    assert json_error_problem(answer, 401) is None
    assert_state_unchanged(instance, before)


def test_private_basic_instance_refuses_every_url_without_valid_credentials(make_instance):
    """API_AUTH=basic: no header, a wrong password (on every URL), an unknown or
    inactive user, malformed base64, another scheme: 401, a basic challenge, and
    nothing of the data."""
    instance = private_instance(make_instance, "basic")
    # The right password reads the manifest (each check costs a password hash).
    endpoints = catalogue(instance, headers=[("Authorization", basic("syncer", PASSWORD))])
    before = instance_state(instance)
    secrets = [PASSWORD, base64.b64encode(f"syncer:{PASSWORD}".encode()).decode()]
    cheap = [  # refused before any password is hashed
        ("none", []),
        ("scheme only", [("Authorization", "Basic")]),
        ("not base64", [("Authorization", "Basic !!!not-base64")]),
        ("unpadded", [("Authorization", basic("syncer", PASSWORD).rstrip("="))]),
        ("not UTF-8", [("Authorization", "Basic " + base64.b64encode(b"\xff:\xfe").decode())]),
        ("token scheme", [("Authorization", f"Token {PASSWORD}")]),
        ("no scheme", [("Authorization", base64.b64encode(PASSWORD.encode()).decode())]),
    ]
    assert_every_url_refuses(instance, endpoints, cheap, "Basic ", secrets, ("GET", "HEAD"))
    # A password is hashed per request (about 0.4 s): every URL once, the rest on a few.
    wrong = [("wrong password", [("Authorization", basic("syncer", PASSWORD[:-1]))])]
    assert_every_url_refuses(instance, endpoints, wrong, "Basic ", secrets, ("GET",))
    retired = ACCOUNTS[2]
    hashed = [
        ("unknown user", [("Authorization", basic("nobody", PASSWORD))]),
        ("inactive user", [("Authorization", basic(retired["username"], retired["password"]))]),
        ("no colon", [("Authorization", "Basic " + base64.b64encode(b"syncer").decode())]),
        ("empty", [("Authorization", basic("", ""))]),
    ]
    few = [e for e in endpoints if e.route in ("manifest", "dump", "records-batch")][:3]
    assert_every_url_refuses(instance, few, hashed, "Basic ", secrets, ("GET",))
    assert_state_unchanged(instance, before)


# --- personal data ----------------------------------------------------------------------


def account_secrets(instance):
    """Every account's username, e-mail, password hash (and its parts), names and
    profile, as the instance's database holds them, with the clear-text passwords."""
    values = set()
    users = "SELECT username, email, password, first_name, last_name FROM auth_user"
    for row in instance.sql(users):
        values.update(row)
        values.update(row[2].split("$")[2:])  # the salt and the hash on their own
    for row in instance.sql("SELECT fname, lname, address, organization FROM hcore_userprofile"):
        values.update(row)
    values.update(account["password"] for account in ACCOUNTS)
    return sorted(v for v in values if len(v) >= 6)


def crawl(instance):
    """Every URL with every page: (url, Answer)."""
    answers = []

    def get(target):
        answer = ask(instance, target)
        assert answer.status == 200, (target, answer.body[:200])
        answers.append((target, answer))
        return answer

    manifest = json.loads(get("/api/").body)
    for entry in manifest["models"]:
        get(entry["url"])
        keys = json.loads(get(entry["keys_url"]).body)
        after = 0
        while True:  # every page, 7 objects a page
            page = json.loads(get(entry["url"] + query([("after", after), ("limit", 7)])).body)
            if not page:
                break
            after = page[-1]["pk"]
        for start in range(0, len(keys), 50):
            get(entry["url"] + query([("pks", ",".join(map(str, keys[start : start + 50])))]))
    summary = json.loads(get(manifest["records"]["summary_url"]).body)
    series = [entry["pk"] for entry in summary]
    get(manifest["records"]["batch_url"] + query([("series", ",".join(map(str, series)))]))
    for pk in series:
        get(manifest["records"]["url"].format(pk=pk))
    for entry in json.loads(get(manifest["files"]["listing_url"]).body):
        if entry["name"]:
            get(manifest["files"]["url"].format(pk=entry["pk"]))
    return answers


def test_no_url_reveals_accounts_profiles_emails_or_password_hashes(public):
    """Every URL, every page (dumps paged and by keys, keys, records, files) of an
    instance whose accounts are linked to stations: no body or header holds any
    account's username, e-mail, password (hash, salt or clear) or profile field."""
    secrets = account_secrets(public)
    assert len(secrets) >= 20 and any(s.startswith("pbkdf2") for s in secrets)
    answers = crawl(public)
    assert len(answers) > 150
    leaks = [(url, s) for url, answer in answers for s in secrets if s in answer.text]
    assert not leaks, f"personal data served: {leaks[:10]}"


# --- credentials in logs and run records ----------------------------------------------------


def logged(caplog):
    return caplog.text + "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )


def sync(database, caplog):
    """The command in this process at -v 3: (all it wrote and logged, the exception)."""
    out, err, failure = io.StringIO(), io.StringIO(), None
    caplog.clear()  # only what the run logs
    try:
        call_command(
            "hcore_remotesyncdb", "-r", database.name, "-N", "-v", "3", stdout=out, stderr=err
        )
    except CommandError as exc:
        failure = exc
    text = out.getvalue() + err.getvalue() + logged(caplog)
    if failure is not None:
        text += "".join(traceback.format_exception(failure)) + repr(failure)
    assert any(r.name == "django.db.backends" for r in caplog.records)  # SQL was captured
    return text, failure


def sync_in_subprocess(database):
    """The command as cron runs it, its loggers at DEBUG (the settings' LOGGING)."""
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "DJANGO_LOG_LEVEL": "DEBUG",
        "DBSYNC_LOG_LEVEL": "DEBUG",
        "DBSYNC_WORK_DIR": str(settings.DBSYNC_WORK_DIR),
        "DBSYNC_ALLOW_HTTP_CREDENTIALS": "1",  # the remote is plain HTTP on loopback
    }
    command = [sys.executable, str(ROOT / "manage.py"), "hcore_remotesyncdb"]
    done = subprocess.run(
        [*command, "-r", database.name, "-N", "-v", "3", "--traceback"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["token", "basic"])
def test_credentials_never_appear_in_logs_output_runs_or_errors(
    mode, make_instance, settings, caplog, tmp_path
):
    """A private remote synced at -v 3 with every logger at DEBUG, SQL included: a good
    run (in this process and as a subprocess), a run with a wrong credential and a
    run against an unreachable port. Neither the credential nor the wrong one (nor the
    basic header's base64) is in the logs, stdout, stderr, the runs' fields, the
    exceptions, the mails or the work folder; the failures name their cause."""
    settings.DBSYNC_WORK_DIR = tmp_path / "work"
    settings.DBSYNC_HTTP_RETRIES = 1
    settings.DBSYNC_HTTP_BACKOFF = 0.05
    settings.DEBUG = True  # Django logs every SQL statement, with its parameters
    settings.DBSYNC_ALLOW_HTTP_CREDENTIALS = True  # the remote is plain HTTP on loopback
    for name in (None, "dbsync", "django", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    remote = private_instance(make_instance, mode, hostname=f"{mode}.example.org")
    wrong = f"wrong-{PASSWORD}-{TOKEN}"
    if mode == "token":
        credentials, bad = {"token": TOKEN}, {"token": wrong}
        secrets = [TOKEN, wrong]
    else:
        credentials, bad = {"username": "syncer", "password": PASSWORD}, {"password": wrong}
        secrets = [PASSWORD, wrong]
        secrets += [base64.b64encode(f"syncer:{p}".encode()).decode() for p in (PASSWORD, wrong)]
    database = Database.objects.create(
        name=f"private-{mode}",
        hostname=remote.hostname,
        ip_address="127.0.0.1",
        port=remote.port,
        **credentials,
    )
    texts = {}

    texts["good run"], failure = sync(database, caplog)
    assert failure is None, failure

    done = sync_in_subprocess(database)
    assert done.returncode == 0, done.stderr[-2000:]
    # logs were on (an unchanged remote fetches no dump: any INFO line of dbsync will do)
    assert " INFO dbsync." in done.stderr and " DEBUG " in done.stderr
    texts["subprocess"] = done.stdout + done.stderr

    Database.objects.filter(pk=database.pk).update(**bad)
    texts["wrong credential"], failure = sync(database, caplog)
    assert failure is not None and "refused access (HTTP 401)" in str(failure)

    Database.objects.filter(pk=database.pk).update(port=free_port(), **credentials)
    texts["unreachable"], failure = sync(database, caplog)
    assert failure is not None and "cannot reach" in str(failure)

    caplog.clear()
    runs = list(SyncRun.objects.filter(database=database).order_by("pk").values())
    statuses = [run["status"] for run in runs]
    assert statuses == [SyncRun.SUCCEEDED] * 2 + [SyncRun.FAILED] * 2
    texts["runs"] = json.dumps(runs, default=str)
    texts["mails"] = "\n".join(m.message().as_string() for m in mail.outbox)
    work = tmp_path / "work"
    texts["work folder"] = "\n".join(
        p.read_text(errors="replace") for p in work.rglob("*") if p.is_file()
    )
    leaks = [(where, s[:12]) for where, text in texts.items() for s in secrets if s in text]
    assert not leaks, f"credentials leaked: {leaks}"
