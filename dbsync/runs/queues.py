"""The Celery queues of dbsync (constants: settings, tasks and the docs name them).

A worker started without ``-Q`` consumes all three. On several hosts, fetch
workers may consume FETCH only and install workers INSTALL (they then share
dumps through S3-compatible storage, see ``dbsync.runs.storage``).
"""

SYNC = "dbsync"  # sync_remote, start_run, errbacks, reaping: short tasks
FETCH = "dbsync.fetch"  # one task per model: network-bound, run many at once
INSTALL = "dbsync.install"  # one transaction per run: database-bound

ALL = (SYNC, FETCH, INSTALL)
