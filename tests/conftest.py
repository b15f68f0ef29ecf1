import pytest

from tests.instance import Instance, Template


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path_factory):
    """Files that syncs fetch go to a folder of the test run, not to var/media."""
    settings.MEDIA_ROOT = tmp_path_factory.getbasetemp() / "media"


@pytest.fixture(autouse=True)
def _request_slots_closed():
    """The request slots' own connection (dbsync.engine.request_slots), opened by any test
    that fetches, closed after it: its session would keep the test database from
    being dropped at the end."""
    yield
    from dbsync.engine import request_slots

    request_slots.close()


@pytest.fixture
def no_overlap(settings):
    """No overlap window: only the capture's cursor can make a late change arrive."""
    settings.DBSYNC_OVERLAP_SECONDS = 0


@pytest.fixture(scope="session")
def instance_template():
    template = Template()
    yield template
    template.drop()


@pytest.fixture
def make_instance(instance_template):
    """Factory of real remote instances (own database, own gunicorn)."""
    created = []

    def factory(hostname="remote.example.org", **settings):
        instance = Instance(instance_template, hostname=hostname, **settings)
        created.append(instance)
        return instance

    yield factory
    for instance in created:
        instance.drop()
