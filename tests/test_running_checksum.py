"""The manifest's per-model checksum, kept by the capture triggers (hcore.checksums):
after every kind of write (the ORM, ``update()``, raw SQL, many-to-many links through
their table, TRUNCATE), it equals the checksums endpoint's over every key, which
hashes the rows as they are (PostgreSQL, the test database's real triggers)."""

import json
import threading
import time

import psycopg
import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hcore import checksums
from hcore import models as m
from hcore.capture import HASH_TABLE
from protocol.formats import ZERO_CHECKSUM
from protocol.schema import served_models
from tests.api_helpers import create_sample_data

pytestmark = pytest.mark.django_db

LINKS = "hcore_unitofmeasurement_variables"


def body(response):
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def manifest_checksums(client):
    manifest = json.loads(body(client.get("/api/")))
    return {entry["model"]: entry.get("checksum") for entry in manifest["models"]}


def endpoint_checksum(client, label):
    response = client.get(f"/api/{label.replace('.', '/')}/checksums/", {"parts": 1})
    assert response.status_code == 200, body(response)
    parts = json.loads(body(response))["parts"]
    return parts[0][2] if parts else ZERO_CHECKSUM


def assert_checksums_hold(client):
    kept = manifest_checksums(client)
    for model in served_models():
        label = model._meta.label_lower
        assert kept[label] is not None, f"{label}: no checksum in the manifest"
        assert kept[label] == endpoint_checksum(client, label), label


def sql(statement, params=None):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


@pytest.fixture
def sample(db):
    return create_sample_data()


def test_every_model_has_its_checksum_in_the_manifest(client, sample):
    assert_checksums_hold(client)
    assert manifest_checksums(client)["hcore.station"] != ZERO_CHECKSUM


def test_orm_update_and_raw_sql_writes_keep_it(client, sample):
    m.Station.objects.update(name="Renamed by update()")
    assert_checksums_hold(client)
    sql("UPDATE hcore_gentity SET remarks = remarks || ' (SQL)'")
    sql("UPDATE hcore_timezone SET utc_offset = utc_offset + 60")
    assert_checksums_hold(client)
    sql(
        "INSERT INTO hcore_eventtype (descr, descr_alt, last_modified) "
        "VALUES ('By SQL', '', now())"
    )
    sql("DELETE FROM hcore_eventtype WHERE descr = 'By SQL'")
    sql(
        "INSERT INTO hcore_filetype (descr, descr_alt, mime_type, last_modified) "
        "VALUES ('x', '', 'y', now())"
    )
    assert_checksums_hold(client)


def test_a_changed_value_changes_the_checksum_and_its_undoing_restores_it(client, sample):
    before = manifest_checksums(client)["hcore.timezone"]
    sql("UPDATE hcore_timezone SET code = code || 'x'")
    assert manifest_checksums(client)["hcore.timezone"] != before
    sql("UPDATE hcore_timezone SET code = left(code, -1)")
    assert manifest_checksums(client)["hcore.timezone"] == before


def test_many_to_many_links_through_their_table_keep_it(client, sample):
    unit = m.UnitOfMeasurement.objects.first()
    variables = list(m.Variable.objects.all())
    unit.variables.set(variables[:1])
    assert_checksums_hold(client)
    unit.variables.add(*variables[1:])
    assert_checksums_hold(client)
    sql(f"UPDATE {LINKS} SET variable_id = %s WHERE variable_id = %s", [variables[0].pk, 0])
    other = m.UnitOfMeasurement.objects.exclude(pk=unit.pk).first()
    other.variables.clear()
    sql(
        f"UPDATE {LINKS} SET unitofmeasurement_id = %s WHERE unitofmeasurement_id = %s",
        [other.pk, unit.pk],
    )
    assert_checksums_hold(client)
    unit.variables.remove(variables[0])
    other.variables.clear()
    assert_checksums_hold(client)


def test_truncate_keeps_it(client, sample):
    # The test's transaction has deferred key checks pending, which TRUNCATE refuses.
    sql("SET CONSTRAINTS ALL IMMEDIATE")
    m.UnitOfMeasurement.objects.first().variables.set(m.Variable.objects.all())
    sql(f"TRUNCATE {LINKS}")
    assert_checksums_hold(client)
    m.UnitOfMeasurement.objects.first().variables.set(m.Variable.objects.all())
    sql("SET CONSTRAINTS ALL IMMEDIATE")
    # The owner and its links in one statement: the owner's ends at zero whatever the
    # order of the two tables' triggers.
    sql(f"TRUNCATE hcore_unitofmeasurement, {LINKS} CASCADE")
    assert_checksums_hold(client)
    assert manifest_checksums(client)["hcore.unitofmeasurement"] == ZERO_CHECKSUM


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["add", "remove", "move"]), st.integers(0, 5), st.integers(0, 5)
        ),
        max_size=8,
    )
)
def test_any_sequence_of_link_writes_keeps_it(client, sample, steps):
    units = list(m.UnitOfMeasurement.objects.order_by("pk"))[:2]
    variables = list(m.Variable.objects.order_by("pk"))
    with transaction.atomic():
        for what, a, b in steps:
            unit, variable = units[a % len(units)], variables[b % len(variables)]
            if what == "add":
                sql(
                    f"INSERT INTO {LINKS} (unitofmeasurement_id, variable_id) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [unit.pk, variable.pk],
                )
            elif what == "remove":
                sql(f"DELETE FROM {LINKS} WHERE unitofmeasurement_id = %s", [unit.pk])
            else:
                sql(
                    f"UPDATE {LINKS} SET unitofmeasurement_id = %s WHERE variable_id = %s "
                    "AND NOT EXISTS (SELECT 1 FROM {LINKS} x WHERE x.unitofmeasurement_id = %s "
                    "AND x.variable_id = %s)".replace("{LINKS}", LINKS),
                    [unit.pk, variable.pk, unit.pk, variable.pk],
                )
        assert_checksums_hold(client)
        transaction.set_rollback(True)


def test_refresh_computes_anew_only_what_changed(client, sample):
    assert checksums.refresh() == []
    # A stale fingerprint (a model whose served fields changed) and a wrong sum.
    sql(f"UPDATE {HASH_TABLE} SET fingerprint = 'stale' WHERE table_name = 'hcore_station'")
    sql(
        "UPDATE dbsync_change_counter SET checksum = checksum + 1 "
        "WHERE table_name = 'hcore_station'"
    )
    assert checksums.refresh() == ["hcore_station"]
    assert_checksums_hold(client)


def test_a_table_whose_sql_is_missing_gives_no_checksum(client, sample):
    sql(f"DELETE FROM {HASH_TABLE} WHERE table_name = 'hcore_station'")
    assert manifest_checksums(client)["hcore.station"] is None
    m.Station.objects.update(name="Still counted")
    manifest = json.loads(body(client.get("/api/")))
    station = next(e for e in manifest["models"] if e["model"] == "hcore.station")
    assert station["count"] == m.Station.objects.count()
    assert "checksum" not in station


@pytest.mark.django_db(transaction=True)
def test_concurrent_link_writes_to_one_owner_keep_it(client):
    """Two transactions link two variables to one unit at once: the second waits for
    the first (its trigger locks the owner's row before it sums), then sums from a
    snapshot that has the first's link, so the two changes add up."""
    create_sample_data()
    unit = m.UnitOfMeasurement.objects.order_by("pk").first()
    unit.variables.clear()
    first, second = m.Variable.objects.order_by("pk")[:2]
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    insert = f"INSERT INTO {LINKS} (unitofmeasurement_id, variable_id) VALUES (%s, %s)"
    with psycopg.connect(**params) as one, psycopg.connect(**params) as two:
        one.execute(insert, [unit.pk, first.pk])
        waiter = threading.Thread(
            target=lambda: (two.execute(insert, [unit.pk, second.pk]), two.commit())
        )
        waiter.start()
        # The second waits on the owner's row, which the first's trigger locked.
        for _ in range(100):
            with connection.cursor() as cursor:  # outside both transactions
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE pid = %s AND wait_event_type = 'Lock'",
                    [two.info.backend_pid],
                )
                waiting = cursor.fetchone()[0]
            if waiting:
                break
            time.sleep(0.05)
        assert waiting, "the second transaction did not wait for the first"
        one.commit()
        waiter.join(timeout=30)
    assert sorted(unit.variables.values_list("pk", flat=True)) == [first.pk, second.pk]
    assert_checksums_hold(client)


def test_statements_that_write_owners_and_links_together_keep_it(client, sample):
    """Each trigger of such a statement compares the owners' hashes now with those
    stored, so the parts add up whatever the statement combines."""
    units = list(m.UnitOfMeasurement.objects.order_by("pk")[:2])
    variables = list(m.Variable.objects.order_by("pk")[:3])
    units[0].variables.set(variables[:2])
    units[1].variables.set(variables[:1])
    # A CTE that removes an owner's links and renames the owner.
    sql(
        f"WITH gone AS (DELETE FROM {LINKS} WHERE unitofmeasurement_id = %s) "
        "UPDATE hcore_unitofmeasurement SET descr = descr || ' (CTE)' WHERE id = %s",
        [units[1].pk, units[1].pk],
    )
    assert_checksums_hold(client)
    # An upsert that inserts one link and moves another to a third variable.
    sql(
        f"INSERT INTO {LINKS} (unitofmeasurement_id, variable_id) VALUES (%s, %s), (%s, %s) "
        "ON CONFLICT (unitofmeasurement_id, variable_id) DO UPDATE SET variable_id = %s",
        [units[1].pk, variables[0].pk, units[0].pk, variables[0].pk, variables[2].pk],
    )
    assert_checksums_hold(client)
    # A MERGE that deletes some links and inserts others.
    sql(
        f"MERGE INTO {LINKS} l USING (SELECT %s::bigint AS u, v.id AS v FROM hcore_variable v) s "
        "ON l.unitofmeasurement_id = s.u AND l.variable_id = s.v "
        "WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT (unitofmeasurement_id, "
        "variable_id) VALUES (s.u, s.v)",
        [units[0].pk],
    )
    assert_checksums_hold(client)


def test_a_migrate_forgets_the_sql_first_so_a_dropped_column_fails_no_write(client, sample):
    """Before a migrate applies anything, the per-table SQL goes (hcore.checksums.forget):
    a migration that drops a column the SQL names leaves every write working."""
    checksums.forget()
    sql("SET CONSTRAINTS ALL IMMEDIATE")  # the test's pending key checks, which ALTER refuses
    sql("ALTER TABLE hcore_eventtype DROP COLUMN descr_alt")
    sql("INSERT INTO hcore_eventtype (descr, last_modified) VALUES ('After the drop', now())")
    sql("UPDATE hcore_eventtype SET descr = descr || '!'")
    sql("DELETE FROM hcore_eventtype WHERE descr LIKE 'After the drop%%'")
    manifest = json.loads(body(client.get("/api/")))
    entry = next(e for e in manifest["models"] if e["model"] == "hcore.eventtype")
    assert "checksum" not in entry  # counted, not summed, until the migrate's refresh
