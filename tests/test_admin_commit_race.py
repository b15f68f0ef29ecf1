"""An admin list asked for while a sync commits a large install.

Django's changelist counts the objects, and when the count fits on one page it lists
the whole queryset, with no LIMIT. Each statement of a request sees the latest commits
(READ COMMITTED): a sync that commits 100,000 stations between the count and the
list's query made one page hold all of them, a 49.8 s request in the load test
(tests/reliability/test_load.py). A page must hold at most a page of rows, whatever
was committed in between.
"""

import threading
import time

import psycopg
import pytest
from django.conf import settings
from django.db import connection, transaction
from django.urls import reverse

from hcore.models import Person, Station, StationType

pytestmark = pytest.mark.django_db(transaction=True)

COMMITTED = 150  # more than a page (list_per_page: 100)


def waiting_on(table):
    """Whether a session waits for a lock on ``table`` (of this test's database)."""
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
            [table],
        ).fetchone()[0]


def commit_while_listed(owner, kind, listed, seen_waiting):
    """Insert COMMITTED stations in a transaction that also holds a lock on
    hcore_lentity, which the list's query joins (for the owners) and its count does
    not: the request counts, then waits; the stations commit; its list query runs.

    The lock only orders the two on cue, as a sync's COMMIT falls between them by
    chance under load; the stations and the commit are real."""
    try:
        with transaction.atomic():
            for n in range(COMMITTED):
                Station.objects.create(name=f"Synced {n}", owner=owner, type=kind)
            with connection.cursor() as cursor:
                cursor.execute("LOCK TABLE hcore_lentity IN ACCESS EXCLUSIVE MODE")
            listed.set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not waiting_on("hcore_lentity"):
                time.sleep(0.05)
            seen_waiting.append(bool(waiting_on("hcore_lentity")))
    finally:
        connection.close()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs concurrent sessions")
def test_a_commit_between_the_count_and_the_list_gives_at_most_a_page(admin_client):
    owner = Person.objects.create(last_name="Owner")
    kind = StationType.objects.create(descr="Type")
    Station.objects.create(name="Local station", owner=owner, type=kind)
    listed, seen_waiting = threading.Event(), []
    writer = threading.Thread(target=commit_while_listed, args=(owner, kind, listed, seen_waiting))
    writer.start()
    try:
        assert listed.wait(30)
        response = admin_client.get(reverse("admin:hcore_station_changelist"))
    finally:
        writer.join()

    assert seen_waiting == [True], "the list's query did not wait for the commit"
    assert response.status_code == 200
    rows = response.content.count(b'name="_selected_action"')
    assert Station.objects.count() == 1 + COMMITTED
    assert 1 <= rows <= 100, f"one page of the station list held {rows} stations"
