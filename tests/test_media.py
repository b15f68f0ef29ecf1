"""Replicated files (GentityFile) are downloadable from the admin in production
(DEBUG off, where Django serves no media), to users allowed to see them only."""

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command

from hcore.models import GentityFile

pytestmark = pytest.mark.django_db


@pytest.fixture
def files(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.DEBUG = False
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    call_command("generate_sample_data", stations=4, files_per_station=1, verbosity=0)
    stored = GentityFile.objects.exclude(content="").order_by("pk")
    assert stored.count() >= 2
    return stored


def url(obj):
    return obj.content.url  # what the admin's file widget links to


def test_a_user_allowed_to_view_files_downloads_the_stored_bytes(client, files, django_user_model):
    user = django_user_model.objects.create_user("hydrologist", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_gentityfile"))
    client.force_login(user)
    obj = files.first()
    response = client.get(url(obj))
    assert response.status_code == 200
    with obj.content.open("rb") as fh:
        assert b"".join(response.streaming_content) == fh.read()
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["X-Content-Type-Options"] == "nosniff"


def test_anonymous_users_are_sent_to_log_in(client, files):
    response = client.get(url(files.first()))
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_users_without_the_permission_are_refused(client, files, django_user_model):
    client.force_login(django_user_model.objects.create_user("visitor", is_staff=True))
    assert client.get(url(files.first())).status_code == 403


def test_only_names_an_object_points_at_are_served(admin_client, files, settings):
    obj = files.first()
    (settings.MEDIA_ROOT / "gentityfile" / "leftover.part").write_bytes(b"half a file")
    (settings.MEDIA_ROOT / "secret.txt").write_bytes(b"not a GentityFile")
    for name in ("gentityfile/leftover.part", "secret.txt", "../settings.py",
                 obj.content.name + "x", ""):  # fmt: skip
        assert admin_client.get(f"/media/{name}").status_code == 404, name
    # A name an object points at whose file is gone is a 404 too, not a 500.
    obj.content.storage.delete(obj.content.name)
    assert admin_client.get(url(obj)).status_code == 404
