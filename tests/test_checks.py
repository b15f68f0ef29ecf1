"""dbsync's system checks: the deadlines' order, checked as ``manage.py`` starts.

Run as an operator would: ``manage.py check`` in a process of its own, with the
settings from the environment, its exit status and its message."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def manage_check(tmp_path, **env):
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", "DBSYNC_VAR_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def test_the_default_deadlines_are_in_order(tmp_path):
    status, output = manage_check(tmp_path)
    assert status == 0, output
    assert "dbsync.E001" not in output


@pytest.mark.parametrize(
    ("env", "shorter", "longer"),
    [
        (
            {"DBSYNC_HTTP_TIMEOUT": "120", "DBSYNC_REQUEST_DEADLINE": "60"},
            "DBSYNC_HTTP_TIMEOUT (120 s",
            "DBSYNC_REQUEST_DEADLINE (60 s",
        ),
        (
            {"DBSYNC_REQUEST_DEADLINE": "7200", "DBSYNC_RUN_DEADLINE": "3600"},
            "DBSYNC_REQUEST_DEADLINE (7200 s",
            "DBSYNC_RUN_DEADLINE (3600 s",
        ),
        (
            {"DBSYNC_TASK_TIME_LIMIT": "3600"},  # soft limit 3300 s, under the run's 5 h
            "DBSYNC_RUN_DEADLINE (18000 s",
            "CELERY_TASK_SOFT_TIME_LIMIT (3300 s",
        ),
    ],
    ids=["read timeout over the request deadline", "request over run", "run over task"],
)
def test_deadlines_out_of_order_stop_manage_py_naming_both(tmp_path, env, shorter, longer):
    status, output = manage_check(tmp_path, **env)
    assert status != 0
    assert "dbsync.E001" in output
    assert shorter in output and longer in output, output
