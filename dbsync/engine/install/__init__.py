"""The install: dumps on disk -> the local database, in the caller's transaction.

1. The key map ``(this remote, model, remote pk) -> local pk`` is read from the
   local tables; objects seen for the first time get their local pk allocated up
   front, so that every foreign key (forward references and cycles included) is
   written with its final value in one pass. No dummy objects.
2. Every reference is checked: a key to an object the remote did not send is asked
   for again (the remote may have changed between two model fetches) by raising
   ``MissingObjects``, which rolls the caller's transaction back; the caller fetches
   those objects and installs again (``dbsync.engine.sync.install_fetched``), so no
   request is ever made inside the transaction. Only a reference that still dangles
   is an error.
3. Each model's rows are staged (COPY on PostgreSQL) and merged with one
   ``INSERT ... ON CONFLICT (pk) DO UPDATE ... WHERE <something changed>``, so rows
   that did not change are not touched.
4. Many-to-many links of the synced objects are replaced in bulk.
5. Objects the remote no longer has are deleted, under a guard; so are the old
   child rows of an object whose concrete type changed (its root row stays).

Only rows whose key map says they came from this remote are ever updated or
deleted: the payload's own ``original_db``/``original_id`` are ignored.

The parts, each with its own state (the modules' docstrings say more):

- ``spec``: ``ModelSpec`` (a model's dump -> its table) and pure checks and
  conversions of one object; no state.
- ``source.Dumps``: model label -> dump paths (re-fetched ones appended last, the
  newest), and the objects in them.
- ``keymap.KeyMaps``: root label -> remote pk -> local pk; ``loaded`` (before the
  run, never changed) and ``allocated`` (drawn from the sequences in this run).
- ``references.References``: ``present``, ``refs`` and ``bad``, all remote pks:
  what the dumps hold, what was referred to unknown, what is skipped (``--skip``).
- ``writers``: SQL only; local pks and converted rows in, rows written and the pks
  that changed out.
- ``impact``: what deleting some objects would remove, walking the relations.
- ``deletions``: what the remote no longer has, counted whole, deleted under the guard.
- ``inserver``: a first sync installed by PostgreSQL (the dumps' lines into the
  server, one ``INSERT ... SELECT`` a model); any doubt rolls it back to a savepoint
  and the steps above install the same dumps in Python.
- ``installer.Installer``: runs them in order and holds ``written`` and ``grown``.

Invariants between them:

- Remote keys and local keys never mix in one set: ``present``, ``refs``, ``bad``
  and the key maps' keys are remote pks; ``written[model label]`` (local pks whose
  row this run inserted or merged), the key maps' values, ``owners`` and links are
  local pks.
- The key maps and ``bad`` are keyed by the *root* model's label (a multi-table
  child shares its parent row's pk): ``bad`` holds (root label, remote pk).
  ``present``, ``refs`` and ``written`` are keyed by the model's own label.
- A remote object is *present* once read from the dumps, *written* once its row
  is; with ``--skip`` a present object may be bad and so never written.
- Models are installed in plan order (``plan.models``): parent models before their
  children, so that a child's parent row is present when the child is read. Foreign
  keys may point forward (to a model later in the plan, or in a cycle): their local
  pk is allocated on first sight and the row written later; the database checks them
  at COMMIT (deferred constraints, or ``KeyChecks`` for COPYed rows).
- With ``--skip``, all dumps are scanned and ``bad`` is complete (re-fetches,
  dangling references, propagation) before the first write; the writers then only
  read it. Without ``--skip``, ``bad`` stays empty and every problem raises.
- At COMMIT: every reference written points at an object of this run or an earlier
  one (``References.resolve_after`` raised otherwise), the foreign keys of the rows
  written with triggers off are checked (``KeyChecks.check``), and deletions, last,
  stayed within ``deletion_allowance`` (or an approval) and this remote's own
  objects, and took no object the remote still lists.
"""

from ..guard import deletion_allowance, validate_max_delete
from .inserver import drop_staged
from .installer import Installer
from .spec import ModelSpec, without_file_name

__all__ = [
    "Installer",
    "drop_staged",
    "ModelSpec",
    "deletion_allowance",
    "validate_max_delete",
    "without_file_name",
]
