"""manage.py dbsync_addremote: secrets from files, stdin or the environment, never
from the arguments; defaults by scheme; updates in place; refusals with their reason."""

import io
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from dbsync.models import Database
from tests.instance import ROOT

TOKEN, PASSWORD = "token-from-a-file-91ac", "password-from-a-file-3d7e"


def addremote(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("dbsync_addremote", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def manage_addremote(*args, stdin=None, env=None):
    """The command as an operator runs it: a process, its exit status, its output."""
    db = settings.DATABASES["default"]
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "dbsync_addremote", *args],
        input=stdin,
        env={
            **os.environ,
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            **(env or {}),
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return str(path)


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    return str(path)


def raw_token(name):
    with connection.cursor() as cursor:
        cursor.execute("SELECT token FROM dbsync_database WHERE name = %s", [name])
        return cursor.fetchone()[0]


@pytest.fixture(autouse=True)
def no_secrets_in_the_environment(monkeypatch):
    monkeypatch.delenv("DBSYNC_REMOTE_TOKEN", raising=False)
    monkeypatch.delenv("DBSYNC_REMOTE_PASSWORD", raising=False)


# --- registering ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_new_remote_is_https_on_443_by_default(token_file):
    out, _ = addremote("--name", "athens", "--hostname", "athens.example.org")
    assert "Registered remote athens (https://athens.example.org:443" in out
    database = Database.objects.get(name="athens")
    assert (database.scheme, database.port, database.verify_tls) == ("https", 443, True)
    addremote("--name", "plain", "--hostname", "plain.example.org", "--scheme", "http")
    assert Database.objects.get(name="plain").port == 80
    addremote("--name", "odd", "--hostname", "odd.example.org", "--port", "8443")
    assert Database.objects.get(name="odd").port == 8443


@pytest.mark.django_db
def test_the_token_is_read_from_a_file_and_stored_encrypted(token_file):
    out, _ = addremote(
        "--name", "athens", "--hostname", "athens.example.org", "--token-file", token_file
    )
    assert "Stored its token (encrypted), read from --token-file." in out
    assert TOKEN not in out
    assert Database.objects.get(name="athens").token == TOKEN  # without the line end
    assert TOKEN not in raw_token("athens") and raw_token("athens").startswith("fernet:")


@pytest.mark.django_db
def test_a_password_from_a_file_with_its_username(password_file):
    args = ["--name", "athens", "--hostname", "athens.example.org", "--password-file"]
    with pytest.raises(CommandError, match="A password needs a username: give --username."):
        addremote(*args, password_file)
    assert not Database.objects.exists()
    addremote(*args, password_file, "--username", "syncer")
    database = Database.objects.get(name="athens")
    assert (database.username, database.password) == ("syncer", PASSWORD)


@pytest.mark.django_db
def test_secrets_from_the_environment(monkeypatch):
    monkeypatch.setenv("DBSYNC_REMOTE_TOKEN", TOKEN)
    monkeypatch.setenv("DBSYNC_REMOTE_PASSWORD", PASSWORD)
    out, _ = addremote(
        "--name", "athens", "--hostname", "athens.example.org", "--username", "syncer"
    )
    assert "read from $DBSYNC_REMOTE_TOKEN" in out and "read from $DBSYNC_REMOTE_PASSWORD" in out
    database = Database.objects.get(name="athens")
    assert (database.token, database.password) == (TOKEN, PASSWORD)


@pytest.mark.django_db(transaction=True)
def test_the_token_from_stdin_in_a_real_process():
    done = manage_addremote(
        "--name", "athens", "--hostname", "athens.example.org", "--token-file", "-",
        stdin=TOKEN + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "read from stdin" in done.stdout and TOKEN not in done.stdout + done.stderr
    assert Database.objects.get(name="athens").token == TOKEN


# --- no secret on the command line ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("option", ["--token", "--password", "--tok"])
def test_there_is_no_option_that_takes_a_secret(option):
    done = manage_addremote("--name", "athens", "--hostname", "a.example.org", option, "s3cr3t")
    assert done.returncode == 2
    assert f"unrecognized arguments: {option}" in done.stderr
    assert not Database.objects.exists()


# --- bad input: exit status and message, nothing changed -----------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_unreadable_file_is_exit_status_1_without_echoing_the_path(tmp_path):
    missing = str(tmp_path / "maybe-a-secret-typed-by-mistake")
    done = manage_addremote("--name", "a", "--hostname", "a.example.org", "--token-file", missing)
    assert done.returncode == 1
    assert "Cannot read the --token-file given: No such file or directory." in done.stderr
    assert "maybe-a-secret" not in done.stderr
    assert not Database.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, contents, message",
    [
        (["--token-file", "{file}"], "", "The token read from --token-file is empty."),
        (["--token-file", "{file}"], "one\ntwo\n", "has more than one line"),
        (["--token-file", "-", "--password-file", "-"], "", "Only one of"),
        (["--port", "70000"], "", "--port must be between 1 and 65535."),
        (["--ip", "not-an-ip"], "", "ip_address: Enter a valid IPv4 or IPv6 address."),
        (["--scheme", "http", "--token-file", "{file}"], "t", "sent over HTTPS only"),
        (["--insecure", "--verify-tls"], "", "not allowed with argument"),
    ],
    ids=["empty", "two lines", "stdin twice", "port", "ip", "http", "tls"],
)
def test_bad_input_is_refused_with_its_reason(tmp_path, args, contents, message):
    path = tmp_path / "secret"
    path.write_text(contents)
    args = [a.format(file=path) for a in args]
    with pytest.raises(CommandError, match=message):
        addremote("--name", "athens", "--hostname", "athens.example.org", *args)
    assert not Database.objects.exists()


@pytest.mark.django_db
def test_a_new_remote_needs_a_hostname():
    with pytest.raises(CommandError, match="No remote named 'athens': give --hostname."):
        addremote("--name", "athens")


@pytest.mark.django_db
def test_plain_http_with_a_token_to_loopback_with_the_setting(settings, token_file):
    settings.DBSYNC_ALLOW_HTTP_CREDENTIALS = True
    args = ["--name", "dev", "--hostname", "dev.localhost", "--scheme", "http"]
    with pytest.raises(CommandError, match="a loopback IP address only"):
        addremote(*args, "--token-file", token_file)
    addremote(*args, "--ip", "127.0.0.1", "--port", "8000", "--token-file", token_file)
    assert Database.objects.get(name="dev").token == TOKEN


# --- updating in place ---------------------------------------------------------------------


@pytest.fixture
def athens(token_file):
    addremote("--name", "athens", "--hostname", "athens.example.org", "--token-file", token_file)
    return Database.objects.get(name="athens")


@pytest.mark.django_db
def test_an_update_changes_only_what_is_given_and_keeps_the_token(athens):
    out, err = addremote("--name", "athens", "--descr", "The Athens observatory")
    assert "Updated remote athens (https://athens.example.org:443" in out and err == ""
    database = Database.objects.get(name="athens")
    assert (database.descr, database.hostname, database.token) == (
        "The Athens observatory",
        "athens.example.org",
        TOKEN,
    )
    addremote("--name", "athens", "--insecure")
    assert Database.objects.get(name="athens").verify_tls is False
    assert Database.objects.get(name="athens").token == TOKEN


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change",
    [["--port", "8443"], ["--ip", "192.0.2.9"], ["--hostname", "new.example.org"]],
    ids=["port", "ip", "hostname"],
)
def test_an_endpoint_change_clears_the_token(athens, change):
    _, err = addremote("--name", "athens", *change)
    assert "Its endpoint changed, so its stored token (given for the old endpoint) was " in err
    assert "cleared" in err and "--token-file" in err
    assert Database.objects.get(name="athens").token == ""


@pytest.mark.django_db
def test_moving_to_http_clears_the_token_and_the_port_follows(athens):
    _, err = addremote("--name", "athens", "--scheme", "http")
    database = Database.objects.get(name="athens")
    assert (database.scheme, database.port, database.token) == ("http", 80, "")
    assert "cleared" in err


@pytest.mark.django_db
def test_an_endpoint_change_with_the_token_given_keeps_it(athens, tmp_path):
    new = tmp_path / "new-token"
    new.write_text("token-for-the-new-port")
    _, err = addremote("--name", "athens", "--port", "8443", "--token-file", str(new))
    assert err == ""
    assert Database.objects.get(name="athens").token == "token-for-the-new-port"
    # The same token again, with another change of port: given, so kept.
    addremote("--name", "athens", "--port", "9443", "--token-file", str(new))
    assert Database.objects.get(name="athens").token == "token-for-the-new-port"


@pytest.mark.django_db
def test_clear_token(athens):
    addremote("--name", "athens", "--clear-token")
    assert Database.objects.get(name="athens").token == ""


@pytest.mark.django_db
def test_bin_demos_call_works():
    # bin/demo registers a plain-HTTP remote on loopback, without credentials.
    demo = (ROOT / "bin" / "demo").read_text()
    assert '--ip 127.0.0.1 --port "$PORT" --scheme http' in demo
    out, err = addremote(
        "--name", "sample", "--hostname", "sample.localhost",
        "--ip", "127.0.0.1", "--port", "8123", "--scheme", "http",
    )  # fmt: skip
    assert "Registered remote sample (http://127.0.0.1:8123, Host: sample.localhost)." in out
    assert err == ""
