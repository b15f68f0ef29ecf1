"""Syncs over real HTTPS, and where credentials may go.

The remotes are real instances (gunicorn) serving TLS with a certificate that a
test CA (trustme) issued for their hostname; the client connects to 127.0.0.1 and
checks the certificate against the registered hostname, with DBSYNC_CA_BUNDLE set
to the test CA.
"""

import io
import logging
import socket
import tomllib

import certifi
import pytest
import trustme
from django.core.management import call_command
from django.core.management.base import CommandError

from dbsync import __version__
from dbsync.models import Database, SyncRun
from hcore.models import Station
from tests.instance import ROOT
from tests.reliability.servers import Listener

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "https-token-5e0c1b"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(autouse=True)
def bundle_in_the_environment(monkeypatch):
    # requests lets REQUESTS_CA_BUNDLE override a session's verify (even False): set,
    # as on many hosts, it must change nothing (psf/requests#3829).
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())


@pytest.fixture
def ca_bundle(ca, tmp_path, settings):
    path = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    settings.DBSYNC_CA_BUNDLE = str(path)
    return path


@pytest.fixture
def secure_remote(make_instance, ca):
    instance = make_instance(hostname="secure.example.org")
    instance.generate(stations=5, seed=11)
    return instance.start(tls=ca)


def register(instance, hostname=None, **fields):
    return Database.objects.create(
        name=fields.pop("name", "remote"),
        hostname=hostname or instance.hostname,
        ip_address="127.0.0.1",
        port=instance.port,
        scheme=instance.scheme,
        **fields,
    )


def sync(database, *args):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "hcore_remotesyncdb", "-r", database.name, "-N", "--no-records", *args,
        stdout=out, stderr=err,
    )  # fmt: skip
    return out.getvalue()


def remote_station_count(instance):
    return instance.sql("SELECT count(*) FROM hcore_station")[0][0]


def last_run(database):
    return SyncRun.objects.filter(database=database).order_by("-pk").first()


# --- TLS ---------------------------------------------------------------------------------


def test_a_sync_over_https_verifies_the_hostname_and_the_data_arrives(secure_remote, ca_bundle):
    assert secure_remote.url.startswith("https://")
    database = register(secure_remote)
    sync(database)
    assert last_run(database).status == SyncRun.SUCCEEDED
    assert Station.objects.filter(original_db=database).count() == remote_station_count(
        secure_remote
    )


def test_a_wrong_hostname_is_refused_and_nothing_changes(secure_remote, ca_bundle):
    database = register(secure_remote, hostname="impostor.example.org")
    with pytest.raises(CommandError) as failure:
        sync(database)
    message = str(failure.value)
    assert "TLS verification failed for impostor.example.org" in message
    assert "impostor.example.org" in message and "secure.example.org" in message
    assert not Station.objects.exists()
    assert last_run(database).status == SyncRun.FAILED


def test_without_the_ca_bundle_the_certificate_is_not_trusted(secure_remote, settings):
    settings.DBSYNC_CA_BUNDLE = ""  # the default bundle (certifi) does not know the test CA
    database = register(secure_remote)
    with pytest.raises(CommandError, match="TLS verification failed.*certificate verify failed"):
        sync(database)
    assert not Station.objects.exists()


def test_verify_tls_off_syncs_even_a_wrong_hostname(secure_remote, settings):
    settings.DBSYNC_CA_BUNDLE = ""
    database = register(secure_remote, hostname="impostor.example.org", verify_tls=False)
    sync(database)
    assert last_run(database).status == SyncRun.SUCCEEDED
    assert Station.objects.count() == remote_station_count(secure_remote)


# --- tokens ------------------------------------------------------------------------------


@pytest.fixture
def private_secure_remote(make_instance, ca):
    instance = make_instance(hostname="private.example.org", API_AUTH="token", API_TOKENS=TOKEN)
    instance.generate(stations=3, seed=5)
    return instance.start(tls=ca)


def test_a_token_goes_over_https_and_the_private_remote_accepts_it(
    private_secure_remote, ca_bundle
):
    database = register(private_secure_remote, token=TOKEN)
    sync(database)
    assert last_run(database).status == SyncRun.SUCCEEDED
    assert Station.objects.count() == remote_station_count(private_secure_remote)


def test_a_port_given_on_the_command_line_gets_no_stored_token(
    private_secure_remote, ca_bundle, caplog
):
    """Registered for another port, synced with -p the remote's: the token is not sent
    there, so the private remote refuses the sync."""
    database = register(private_secure_remote, token=TOKEN)
    Database.objects.filter(pk=database.pk).update(port=private_secure_remote.port + 1)
    caplog.set_level(logging.WARNING, logger="dbsync")
    with pytest.raises(CommandError, match=r"refused access \(HTTP 401\)"):
        sync(database, "-p", str(private_secure_remote.port))
    assert "not sending its stored password or token to port" in caplog.text
    assert not Station.objects.exists()


def non_loopback_address():
    """This host's address on its default route (no packet is sent to find it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.123", 9))
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_a_token_over_plain_http_to_another_address_is_refused_before_sending(settings):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no address but loopback")
    settings.DBSYNC_ALLOW_HTTP_CREDENTIALS = True  # even so: the address is not loopback
    listener = Listener(address)
    try:
        database = Database.objects.create(
            name="plain", hostname="plain.example.org", ip_address=address,
            port=listener.port, scheme="http", token=TOKEN,
        )  # fmt: skip
        with pytest.raises(CommandError) as failure:
            sync(database)
        assert "sent over HTTPS only" in str(failure.value)
        assert "loopback IP address only" in str(failure.value)
        assert listener.connections == 0
        assert last_run(database).status == SyncRun.FAILED
    finally:
        listener.close()


@pytest.fixture
def private_plain_remote(make_instance):
    instance = make_instance(hostname="dev.example.org", API_AUTH="token", API_TOKENS=TOKEN)
    instance.generate(stations=2, seed=2)
    return instance.start()


def test_a_token_over_plain_http_to_loopback_needs_the_setting(private_plain_remote, settings):
    database = register(private_plain_remote, token=TOKEN)
    with pytest.raises(CommandError, match="sent over HTTPS only"):
        sync(database)
    assert not Station.objects.exists()
    settings.DBSYNC_ALLOW_HTTP_CREDENTIALS = True
    sync(database)
    assert Station.objects.count() == remote_station_count(private_plain_remote)


# --- politeness --------------------------------------------------------------------------


def test_every_request_says_who_asks(make_instance, settings, tmp_path):
    """The remote's access log (gunicorn's) shows the User-Agent of every request."""
    log = tmp_path / "access.log"
    instance = make_instance(hostname="polite.example.org")
    instance.generate(stations=2, seed=1)
    instance.start(
        extra_env={"GUNICORN_CMD_ARGS": f"--access-logfile {log} --access-logformat %(a)s"}
    )
    settings.DBSYNC_CONTACT = "ops@aggregator.example.org"
    database = register(instance)
    sync(database)
    settings.DBSYNC_CONTACT = ""
    sync(database, "--full")
    agents = log.read_text().splitlines()
    with_contact = f"dbsync/{__version__} (+ops@aggregator.example.org)"
    assert agents.count(with_contact) >= 5
    assert set(agents) <= {with_contact, f"dbsync/{__version__}", "python-requests/2.34.2"}
    assert f"dbsync/{__version__}" in agents


def test_the_version_is_the_projects():
    with open(ROOT / "pyproject.toml", "rb") as fh:
        assert tomllib.load(fh)["project"]["version"] == __version__
