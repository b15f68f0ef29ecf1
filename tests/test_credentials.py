"""Remote credentials: encrypted at rest, rotated, lost keys, and endpoint changes.

Against the real database (SQL, pg_dump), the real admin (Django test client), and,
for the refusals, a real listening port that counts the connections it gets.
"""

import io
import subprocess

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.forms.models import model_to_dict
from django.urls import reverse

from dbsync.engine.errors import RemoteError
from dbsync.engine.remote import RemoteClient
from dbsync.models import Database, SyncRun
from tests.reliability.servers import Listener

PASSWORD, TOKEN = "clear-password-4f1e9a", "clear-token-b7c2d8e3"
OLD_KEY, NEW_KEY, OTHER_KEY = (Fernet.generate_key().decode() for _ in range(3))


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def keys(settings):
    """Explicit keys for the test (the newest first); change them with ``keys[:] = …``."""
    settings.DBSYNC_SECRET_KEYS = [OLD_KEY]
    return settings.DBSYNC_SECRET_KEYS


def make_remote(**fields):
    values = dict(
        name="athens",
        hostname="athens.example.org",
        scheme="https",
        port=443,
        username="syncer",
        password=PASSWORD,
        token=TOKEN,
    )
    values.update(fields)
    return Database.objects.create(**values)


def raw_secrets(database):
    with connection.cursor() as cursor:
        cursor.execute("SELECT password, token FROM dbsync_database WHERE id = %s", [database.pk])
        return cursor.fetchone()


def admin_url(database=None, view="change"):
    if database is None:
        return reverse(f"admin:dbsync_database_{view}")
    return reverse(f"admin:dbsync_database_{view}", args=[database.pk])


def post_data(database, **changes):
    data = {k: v for k, v in model_to_dict(database).items() if v is not None}
    data.update({"password": "", "token": ""}, **changes)
    return {k: ("on" if v is True else v) for k, v in data.items() if v is not False}


def messages_of(response):
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- encrypted at rest ------------------------------------------------------------------


@pytest.mark.django_db
def test_the_columns_hold_ciphertext_and_the_model_reads_clear_text(keys):
    database = make_remote()
    password, token = raw_secrets(database)
    assert password.startswith("fernet:") and token.startswith("fernet:")
    assert PASSWORD not in password and TOKEN not in token
    assert Fernet(OLD_KEY).decrypt(token.removeprefix("fernet:").encode()).decode() == TOKEN
    fresh = Database.objects.get(pk=database.pk)
    assert (fresh.password, fresh.token) == (PASSWORD, TOKEN)
    # An update through a queryset is encrypted too.
    Database.objects.filter(pk=database.pk).update(token="another-clear-token")
    assert "another-clear-token" not in raw_secrets(database)[1]
    assert Database.objects.get(pk=database.pk).token == "another-clear-token"


@pytest.mark.django_db(transaction=True)
def test_a_pg_dump_of_the_database_holds_no_clear_secret():
    make_remote()
    db = settings.DATABASES["default"]
    dump = subprocess.run(
        ["pg_dump", "--host", db["HOST"], "--port", str(db["PORT"]), "--username", db["USER"]]
        + ["--data-only", "--table", "dbsync_database", db["NAME"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "athens.example.org" in dump  # the row is there
    assert "fernet:" in dump
    assert PASSWORD not in dump and TOKEN not in dump


@pytest.mark.django_db
def test_dumpdata_writes_ciphertext_and_loaddata_reads_it_back(keys, tmp_path):
    database = make_remote()
    out = io.StringIO()
    call_command("dumpdata", "dbsync.database", stdout=out)
    assert PASSWORD not in out.getvalue() and TOKEN not in out.getvalue()
    path = tmp_path / "remotes.json"
    path.write_text(out.getvalue())
    Database.objects.all().delete()
    call_command("loaddata", str(path), verbosity=0)
    loaded = Database.objects.get(pk=database.pk)
    assert (loaded.password, loaded.token) == (PASSWORD, TOKEN)


@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_stored_secrets_and_unapplies(settings):
    call_command("migrate", "dbsync", "0004", verbosity=0)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO dbsync_database (name, hostname, port, scheme, api_path, "
                "verify_tls, username, password, token, app_label, exclude, descr, is_active, "
                "schedule_kind, crontab) VALUES ('old', 'old.example.org', 443, 'https', "
                "'/api/', true, 'u', %s, %s, 'hcore', '', '', true, 'none', '') RETURNING id",
                [PASSWORD, TOKEN],
            )
            pk = cursor.fetchone()[0]
        call_command("migrate", "dbsync", "0005", verbosity=0)
        # The model as of 0005 (later migrations add columns the table has not yet).
        state = MigrationExecutor(connection).loader.project_state(
            ("dbsync", "0005_encrypted_credentials")
        )
        database = state.apps.get_model("dbsync", "Database").objects.get(pk=pk)
        assert (database.password, database.token) == (PASSWORD, TOKEN)
        assert all(v.startswith("fernet:") for v in raw_secrets(database))
        call_command("migrate", "dbsync", "0004", verbosity=0)
        assert raw_secrets(database) == (PASSWORD, TOKEN)
    finally:
        call_command("migrate", "dbsync", verbosity=0)


# --- keys and rotation ------------------------------------------------------------------


@pytest.mark.django_db
def test_rotation_moves_every_secret_to_the_newest_key(keys):
    database = make_remote()
    other = make_remote(name="sparta", hostname="sparta.example.org", password="")
    keys[:] = [NEW_KEY, OLD_KEY]  # the new key first, the old one still there
    assert Database.objects.get(pk=database.pk).token == TOKEN
    out = io.StringIO()
    call_command("dbsync_rotatesecrets", stdout=out)
    assert "Re-encrypted 3 stored secrets under the newest key." in out.getvalue()
    keys[:] = [NEW_KEY]  # the old key dropped
    assert Database.objects.get(pk=database.pk).password == PASSWORD
    assert Database.objects.get(pk=database.pk).token == TOKEN
    assert Database.objects.get(pk=other.pk).token == TOKEN
    assert Database.objects.get(pk=other.pk).password == ""


@pytest.mark.django_db
def test_keys_derived_from_the_django_secret_key_follow_its_fallbacks(settings):
    settings.DBSYNC_SECRET_KEYS = []
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "first-django-key-" * 3, []
    database = make_remote()
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = (
        "second-django-key-" * 3,
        ["first-django-key-" * 3],
    )
    assert Database.objects.get(pk=database.pk).token == TOKEN
    call_command("dbsync_rotatesecrets", stdout=io.StringIO())
    settings.SECRET_KEY_FALLBACKS = []
    assert Database.objects.get(pk=database.pk).token == TOKEN
    # Explicit keys later: the derived key still decrypts, until a rotation.
    settings.DBSYNC_SECRET_KEYS = [NEW_KEY]
    assert Database.objects.get(pk=database.pk).token == TOKEN
    call_command("dbsync_rotatesecrets", stdout=io.StringIO())
    settings.SECRET_KEY = "third-django-key-" * 3
    assert Database.objects.get(pk=database.pk).token == TOKEN


@pytest.mark.django_db
def test_a_key_that_is_not_a_fernet_key_is_named(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.DBSYNC_SECRET_KEYS = [NEW_KEY, "not-a-key"]
    with pytest.raises(ImproperlyConfigured, match="key number 2 is not a Fernet key"):
        make_remote()


# --- a lost key -------------------------------------------------------------------------


@pytest.fixture
def lost_key(keys):
    """A remote whose secrets were encrypted under a key that is gone."""
    database = make_remote()
    keys[:] = [OTHER_KEY]
    return Database.objects.get(pk=database.pk)


@pytest.mark.django_db
def test_a_lost_key_is_reported_on_the_remotes_page_which_still_opens(admin_client, lost_key):
    assert admin_client.get(admin_url(view="changelist")).status_code == 200
    response = admin_client.get(admin_url(lost_key))
    assert response.status_code == 200
    [message] = messages_of(response)
    assert "The stored password and API token of remote 'athens' cannot be decrypted" in message
    assert "DBSYNC_SECRET_KEYS" in message and "enter the password and API token again" in message
    assert "cannot be decrypted (its key is gone): enter it again." in response.text
    assert "fernet:" not in response.text


@pytest.mark.django_db
def test_after_a_lost_key_the_admin_takes_a_new_secret(admin_client, lost_key):
    stored = raw_secrets(lost_key)
    # An unrelated edit keeps the ciphertext as it is (the key may yet come back).
    response = admin_client.post(admin_url(lost_key), post_data(lost_key, descr="edited"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert raw_secrets(lost_key) == stored
    response = admin_client.post(
        admin_url(lost_key), post_data(lost_key, token="re-entered-token", clear_password="on")
    )
    assert response.status_code == 302
    database = Database.objects.get(pk=lost_key.pk)
    assert (database.password, database.token) == ("", "re-entered-token")
    assert database.unreadable_secrets_message() is None


@pytest.mark.django_db(transaction=True)
def test_a_sync_with_an_undecryptable_secret_fails_before_connecting(keys):
    listener = Listener("127.0.0.1")
    try:
        database = make_remote(ip_address="127.0.0.1", port=listener.port)
        keys[:] = [OTHER_KEY]
        with pytest.raises(CommandError) as failure:
            call_command("hcore_remotesyncdb", "-r", "athens", "-N", stdout=io.StringIO())
        assert "cannot be decrypted" in str(failure.value)
        assert "dbsync_addremote --name athens" in str(failure.value)
        assert listener.connections == 0
        run = SyncRun.objects.get(database=database)
        assert run.status == SyncRun.FAILED and "cannot be decrypted" in run.message
    finally:
        listener.close()


# --- changing the endpoint clears the secrets --------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change",
    [
        {"port": 8443},
        {"hostname": "elsewhere.example.org"},
        {"ip_address": "192.0.2.7"},
        {"scheme": "http", "port": 443},
    ],
    ids=["port", "hostname", "ip", "scheme"],
)
def test_changing_the_endpoint_in_the_admin_clears_the_secrets(admin_client, keys, change):
    database = make_remote()
    response = admin_client.post(admin_url(database), post_data(database, **change), follow=True)
    assert response.status_code == 200
    database.refresh_from_db()
    assert (database.password, database.token) == ("", "")
    assert any(
        "its stored password and API token were cleared" in m and "Enter them again" in m
        for m in messages_of(response)
    )


@pytest.mark.django_db
def test_a_secret_given_with_the_endpoint_change_is_kept(admin_client, keys):
    database = make_remote()
    data = post_data(database, port=8443, token="token-for-the-new-port")
    response = admin_client.post(admin_url(database), data, follow=True)
    database.refresh_from_db()
    assert (database.port, database.password, database.token) == (
        8443,
        "",
        "token-for-the-new-port",
    )
    assert any("its stored password was cleared" in m for m in messages_of(response))
    # The same token typed again counts as given too.
    data = post_data(database, port=9443, token="token-for-the-new-port")
    admin_client.post(admin_url(database), data)
    database.refresh_from_db()
    assert (database.port, database.token) == (9443, "token-for-the-new-port")


@pytest.mark.django_db
def test_unrelated_edits_keep_the_secrets(admin_client, keys):
    database = make_remote()
    for change in ({"descr": "edited"}, {"api_path": "/v2/api/"}, {"verify_tls": False}):
        response = admin_client.post(
            admin_url(database), post_data(database, **change), follow=True
        )
        assert not any("cleared" in m for m in messages_of(response))
        database.refresh_from_db()
        assert (database.password, database.token) == (PASSWORD, TOKEN)
    # Same endpoint written differently: not a change.
    admin_client.post(admin_url(database), post_data(database, hostname="ATHENS.example.org"))
    database.refresh_from_db()
    assert database.token == TOKEN


@pytest.mark.django_db
def test_code_that_moves_a_remote_clears_its_secrets_too(keys):
    database = make_remote()
    database.port = 8443
    database.save()
    assert database.cleared_secrets == ["password", "token"]
    fresh = Database.objects.get(pk=database.pk)
    assert (fresh.password, fresh.token) == ("", "")
    # A bookkeeping save that does not write the endpoint clears nothing.
    database = make_remote(name="sparta", hostname="sparta.example.org")
    database.last_sync = None
    database.save(update_fields=["last_sync"])
    assert Database.objects.get(pk=database.pk).token == TOKEN


# --- credentials over HTTPS only ---------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_refuses_credentials_for_a_plain_http_remote(admin_client, keys, settings):
    data = post_data(
        Database(name="plain", hostname="plain.example.org", scheme="http", port=80),
        token="a-token-for-plain-http",
    )
    response = admin_client.post(admin_url(view="add"), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.non_field_errors()
    assert "sent over HTTPS only" in errors[0] and "Set the scheme to https" in errors[0]
    assert not Database.objects.filter(name="plain").exists()

    # The setting allows a loopback IP address, and nothing else.
    settings.DBSYNC_ALLOW_HTTP_CREDENTIALS = True
    response = admin_client.post(admin_url(view="add"), data)
    assert "a loopback IP address only" in response.context["adminform"].form.non_field_errors()[0]
    response = admin_client.post(admin_url(view="add"), {**data, "ip_address": "127.0.0.1"})
    assert response.status_code == 302
    assert Database.objects.get(name="plain").token == "a-token-for-plain-http"


@pytest.mark.django_db
def test_moving_a_remote_to_http_with_a_new_token_is_refused(admin_client, keys):
    database = make_remote()
    data = post_data(database, scheme="http", port=80, token="new-token")
    response = admin_client.post(admin_url(database), data)
    assert response.status_code == 200
    assert "sent over HTTPS only" in response.context["adminform"].form.non_field_errors()[0]
    database.refresh_from_db()
    assert (database.scheme, database.token) == ("https", TOKEN)


@pytest.mark.django_db(transaction=True)
def test_the_client_refuses_credentials_over_plain_http_before_connecting(keys, settings):
    listener = Listener("127.0.0.1")
    try:
        database = make_remote(scheme="http", ip_address="127.0.0.1", port=listener.port)
        with pytest.raises(RemoteError, match="sent over HTTPS only"):
            RemoteClient(database)
        with pytest.raises(CommandError, match="sent over HTTPS only"):
            call_command("hcore_remotesyncdb", "-r", "athens", "-N", stdout=io.StringIO())
        assert listener.connections == 0
    finally:
        listener.close()
