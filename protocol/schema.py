"""What the API serves: which models, which of their fields, and their fingerprint.

Shared by the serving side (``api.views``) and the syncing side (``dbsync``), so
that both agree on the shape of a dump and a syncer can refuse a remote whose
schema differs from its own.
"""

import hashlib
import json

from django.apps import apps
from django.conf import settings

# Personal data and accounts: never served, whatever the app.
NEVER_SERVED_APPS = frozenset({"auth", "admin", "sessions", "contenttypes", "dbsync"})
# Records are served by endpoints of their own (api.records), not as a model: they
# are too many for dumps. Their summary and sync state are each instance's own.
NEVER_SERVED_MODELS = frozenset(
    {"hcore.userprofile", "hcore.record", "hcore.recordssummary", "hcore.recordssyncstate"}
)
# Replication bookkeeping of the serving instance: its own registry's keys mean
# nothing to a reader, and a dump with them would not load into an empty database.
BOOKKEEPING_FIELDS = frozenset({"original_id", "original_db"})


def served_apps():
    return list(getattr(settings, "API_APPS", ["hcore"]))


def is_user_relation(field):
    related = getattr(field, "related_model", None)
    if related is None:
        return False
    return related._meta.app_label == "auth"


def is_served_model(model):
    opts = model._meta
    if opts.app_label in NEVER_SERVED_APPS or opts.label_lower in NEVER_SERVED_MODELS:
        return False
    if opts.abstract or opts.proxy or not opts.managed or opts.auto_created:
        return False
    # A model keyed one-to-one on a user account is personal data.
    return not any(
        f.one_to_one and is_user_relation(f) for f in opts.local_fields if f.is_relation
    )


def served_models(app_label=None):
    """The served models of an app (or of every served app), in a stable order."""
    labels = [app_label] if app_label else served_apps()
    result = []
    for label in labels:
        if label not in served_apps():
            continue
        config = apps.get_app_config(label)
        result.extend(m for m in config.get_models() if is_served_model(m))
    return sorted(result, key=lambda m: m._meta.label_lower)


def get_served_model(label):
    """The served model named ``app.model`` (case-insensitive), or None."""
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return None
    if model._meta.app_label not in served_apps() or not is_served_model(model):
        return None
    return model


def served_fields(model):
    """The concrete fields of a dump, as Django's serializer chooses them.

    Multi-table children get their own fields only (the parent link is the pk);
    user-pointing keys and the bookkeeping fields are left out.
    """
    return [
        f
        for f in model._meta.local_fields
        if f.serialize
        and not f.primary_key
        and f.name not in BOOKKEEPING_FIELDS
        and not is_user_relation(f)
    ]


def served_m2m_fields(model):
    """Many-to-many fields of a dump (those with an auto-created ``through``)."""
    return [
        f
        for f in model._meta.local_many_to_many
        if f.serialize and f.remote_field.through._meta.auto_created and not is_user_relation(f)
    ]


def describe_field(field):
    related = field.related_model._meta.label_lower if field.is_relation else None
    return {
        "name": field.name,
        "type": field.get_internal_type(),
        "null": bool(field.null),
        "max_length": getattr(field, "max_length", None),
        "related": related,
        "many": bool(field.many_to_many),
    }


def describe_model(model):
    parents = [p._meta.label_lower for p in model._meta.get_parent_list()]
    return {
        "model": model._meta.label_lower,
        "parents": parents,
        "fields": [describe_field(f) for f in served_fields(model) + served_m2m_fields(model)],
    }


def fingerprint(model):
    """A short hash of a model's served schema; equal on both sides or no sync."""
    text = json.dumps(describe_model(model), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
