"""Whole-graph comparison of a remote's data with its replica here.

The remote's side comes from its own ``manage.py dumpdata`` (Django's serializer,
independent of our API); the local side from ``dumpdata`` here, restricted to the
objects replicated from that remote, with every key translated back to remote pks.
"""

import io
import json

from django.apps import apps
from django.core.management import call_command

from dbsync.engine.planner import root_of
from protocol.schema import NEVER_SERVED_MODELS

# A file's name is the storage's own on each side (dbsync.engine.files; tests/test_records.py
# compares the files themselves).
IGNORED = {"original_id", "original_db", "last_modified", "creator", "maintainers", "content"}


def dump(objects_json):
    return [o for o in json.loads(objects_json) if o["model"] not in NEVER_SERVED_MODELS]


def remote_graph(instance):
    # Records are compared on their own (tests/test_records.py).
    excluded = [arg for label in sorted(NEVER_SERVED_MODELS) for arg in ("--exclude", label)]
    out = instance.manage("dumpdata", "hcore", *excluded).stdout
    return canonical(dump(out), translate=lambda model, pk: pk, keep=lambda model, pk: True)


def local_dump():
    buf = io.StringIO()
    call_command("dumpdata", "hcore", "dbsync.database", stdout=buf)
    return buf.getvalue()


def origins():
    """(root model, local pk) -> (original_db_id, original_id), for every root row."""
    result = {}
    for model in apps.get_app_config("hcore").get_models():
        if root_of(model) is model and hasattr(model, "original_id"):
            for pk, db, orig in model._base_manager.values_list(
                "pk", "original_db_id", "original_id"
            ):
                result[(model, pk)] = (db, orig)
    return result


def local_graph(database):
    table = origins()

    def translate(model, pk):
        db, orig = table[(root_of(model), pk)]
        return orig if db == database.pk else ("NOT FROM THIS REMOTE", db, pk)

    def keep(model, pk):
        return table[(root_of(model), pk)][0] == database.pk

    objects = [
        o
        for o in json.loads(local_dump())
        if o["model"].startswith("hcore.") and o["model"] not in NEVER_SERVED_MODELS
    ]
    return canonical(objects, translate, keep)


def canonical(objects, translate, keep):
    graph = {}
    for obj in objects:
        model = apps.get_model(obj["model"])
        if not keep(model, obj["pk"]):
            continue
        fields = {}
        for name, value in obj["fields"].items():
            if name in IGNORED:
                continue
            field = model._meta.get_field(name)
            if field.many_to_many:
                value = sorted(translate(field.related_model, v) for v in value)
            elif field.is_relation and value is not None:
                value = translate(field.related_model, value)
            fields[name] = value
        graph.setdefault(obj["model"], {})[translate(model, obj["pk"])] = fields
    return graph


def assert_same_graph(remote, local):
    assert sorted(remote) == sorted(local), "different models"
    for model in remote:
        assert remote[model].keys() == local[model].keys(), f"{model}: different objects"
        for pk, fields in remote[model].items():
            assert local[model][pk] == fields, f"{model}(pk={pk}) differs"
