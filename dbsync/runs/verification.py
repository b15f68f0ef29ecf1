"""A verification (``--verify``) or repair (``--repair``) as a run: the one path the
command, the task and the admin share. Under the remote's lock, as a sync, so that
the replica does not change while it is compared; recorded as a ``SyncRun`` of kind
"verify" or "repair", its finding kept (``SyncRun.verification``) and a divergence
mailed to the admins (``notify.divergence``). The comparison itself is
``dbsync.engine.verify``.
"""

import logging

from dbsync.engine import verify as engine
from dbsync.engine.deadlines import RunDeadline
from dbsync.engine.planner import make_plan
from dbsync.engine.progress import quiet
from dbsync.engine.remote import RemoteClient
from dbsync.engine.result import SyncResult
from dbsync.models import SyncRun

from . import notify
from .locking import claim, lock_or_refuse
from .reverts import start_journal
from .service import failures_recorded, finish

logger = logging.getLogger(__name__)

EQUAL = engine.EQUAL


def run_verify(database, options, *, repair=False, log=quiet):
    """Verify (or, with ``repair``, repair) ``database``'s replica; return the
    VerifyResult, or raise a SyncError (``engine.verify.Unverifiable``: it could not
    compare). ``options``: SyncOptions (app, exclusions, port, records, trigger; for a
    repair also backup and max_delete)."""
    plan = make_plan(options.app_label, [name for name in options.exclude if name])
    with lock_or_refuse(
        database, trigger=options.trigger, options=options.as_json(), started_by=options.started_by
    ):
        run = claim(
            database,
            status=SyncRun.RUNNING,
            trigger=options.trigger,
            options=options.as_json(),
            started_by=options.started_by,
            kind=SyncRun.REPAIR if repair else SyncRun.VERIFY,
        )
        repaired = SyncResult(remote=str(database))
        if repair:  # a repair writes like a sync: journaled, so that it can be reverted
            start_journal(run, options, repaired, log)
        with failures_recorded(run, repaired):
            client = RemoteClient(
                database, port=options.port, run_deadline=RunDeadline.since(run.started_at)
            )
            if repair:
                result = engine.repair(database, plan, client, options, log=log)
                repaired = result.repaired
            else:
                result = engine.verify(database, plan, client, records=options.records, log=log)
        run.verification = result.as_json()
        run.save(update_fields=["verification"])
        message = result.summary()
        if repair:
            message = f"Repaired: {repaired.summary()} {message}"
        finish(run, SyncRun.SUCCEEDED, repaired, message)
        logger.info("%s", message)
        if not result.equal:
            notify.divergence(run)
        return result


def last_verification(database):
    """The latest verification or repair of ``database`` that compared, or None."""
    return (
        database.runs.filter(kind__in=(SyncRun.VERIFY, SyncRun.REPAIR), status=SyncRun.SUCCEEDED)
        .order_by("-pk")
        .first()
    )


def describe(run):
    """'verified equal at …' or 'differs: …' (``dbsync_status``, the admin)."""
    if run is None:
        return "never verified"
    when = f"{run.finished_at:%Y-%m-%d %H:%M %Z}"
    if run.verification.get("state") == engine.EQUAL:
        return f"verified equal at {when}"
    differ = [
        f"{v['model']} {v['differing']}"
        for v in run.verification.get("verdicts", [])
        if not v.get("equal", True)
    ]
    return f"differs (at {when}): {', '.join(differ)}"
