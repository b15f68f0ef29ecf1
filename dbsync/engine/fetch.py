"""Fetching a remote's dumps into a folder: per model, keys-only listings, re-fetches."""

import json
import logging
from pathlib import Path

from protocol.schema import fingerprint

from .dumps import dump_name
from .errors import PayloadError, SchemaMismatch
from .planner import label
from .remote import check_api_path

logger = logging.getLogger(__name__)

REFETCH_CHUNK = 500
# The query of a re-fetch (``pks=1%2C2...``) must keep the request line within what
# servers accept (gunicorn: 4094 bytes), whatever the size of the keys.
REFETCH_QUERY_CHARS = 3000


def check_manifest(plan, manifest, remote):
    """The remote's manifest entries of the planned models; refuse a schema mismatch."""
    entries = {}
    for entry in manifest["models"]:
        if isinstance(entry, dict) and isinstance(entry.get("model"), str):
            entries[entry["model"].lower()] = entry
    missing = [lbl for lbl in plan.labels if lbl not in entries]
    if missing:
        raise SchemaMismatch(
            f"{remote} does not serve {', '.join(missing)}; exclude them (-e) or upgrade the "
            f"remote."
        )
    differ = [
        lbl
        for lbl in plan.labels
        if entries[lbl].get("fingerprint") != fingerprint(plan_model(plan, lbl))
    ]
    if differ:
        raise SchemaMismatch(
            f"{remote} has a different schema for {', '.join(differ)} (schema fingerprints "
            f"differ); both sides must run the same version of the models."
        )
    for lbl in plan.labels:
        for key in ("url", "keys_url"):
            check_api_path(entries[lbl].get(key), remote)
    return entries


def plan_model(plan, model_label):
    return next(m for m in plan.models if label(m) == model_label)


def fetch_model(client, entry, dest_dir, since=None, changed_since=None):
    """Download one model's dump (changed after the moment ``since``, or written by
    transaction ``changed_since`` or later); return {"model", "path", "bytes"}."""
    model_label = entry["model"].lower()
    path = Path(dest_dir) / dump_name(model_label)
    params = {"modified_after": since.isoformat()} if since else None
    if changed_since is not None:
        params = {"changed_since": str(changed_since)}
    size = client.download(entry["url"], path, params)
    logger.info("Fetched %s from %s: %d bytes", model_label, client.database, size)
    return {"model": model_label, "path": str(path), "bytes": size}


def fetch_keys(client, entry, dest_dir, deleted_since=None):
    """Download the keys-only listing of a model (or, given ``deleted_since``, of the
    keys deleted by that transaction or later); return the file's path."""
    if deleted_since is None:
        path = Path(dest_dir) / dump_name(entry["model"].lower(), ".keys")
        client.download(entry["keys_url"], path)
    else:
        path = Path(dest_dir) / dump_name(entry["model"].lower(), ".deleted")
        client.download(entry["keys_url"], path, {"deleted_since": str(deleted_since)})
    return str(path)


def make_refetcher(client, entries, plan, dest_dir):
    """A function that fetches given objects again, with their whole row family."""
    counter = {"n": 0}

    def refetch(model_label, pks):
        model = plan_model(plan, model_label)
        found = {}
        for member in plan.family(model):
            member_label = label(member)
            for chunk in key_chunks(pks):
                counter["n"] += 1
                path = Path(dest_dir) / dump_name(member_label, f".refetch{counter['n']}")
                client.download(
                    entries[member_label]["url"], path, {"pks": ",".join(map(str, chunk))}
                )
                found.setdefault(member_label, []).append(str(path))
        return found

    return refetch


def key_chunks(pks):
    """``pks`` in chunks of at most REFETCH_CHUNK keys and REFETCH_QUERY_CHARS characters
    once URL-encoded (a comma is ``%2C``)."""
    chunk, size = [], 0
    for pk in pks:
        length = len(str(pk)) + 3
        if chunk and (len(chunk) >= REFETCH_CHUNK or size + length > REFETCH_QUERY_CHARS):
            yield chunk
            chunk, size = [], 0
        chunk.append(pk)
        size += length
    if chunk:
        yield chunk


def write_fetch_record(dest_dir, record):
    path = Path(dest_dir) / "fetch.json"
    path.write_text(json.dumps(record, indent=1, default=str))
    return path


def read_fetch_record(dest_dir):
    path = Path(dest_dir) / "fetch.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise PayloadError(f"{path}: unreadable fetch record: {exc}") from exc
