"""``manage.py check --deploy`` with .env.example's values, as an operator copies them.

The placeholders (values with "change-me") are what an operator must replace: they are
replaced here by random secrets. What is left is only what needs a real domain:
HSTS preloading (security.W021), which a site asks for once it owns its domain."""

import re
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEEDS_A_REAL_DOMAIN = {"security.W021"}


def env_example():
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            name, value = match.groups()
            values[name] = secrets.token_urlsafe(50) if "change-me" in value else value
    return values


def test_check_deploy_is_clean_with_the_example_settings(tmp_path):
    values = env_example()
    assert values.get("DJANGO_DEBUG", "0").lower() in {"", "0", "false", "no", "off"}
    env = {"PATH": "/usr/bin:/bin", "DBSYNC_VAR_DIR": str(tmp_path), **values}
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = set(re.findall(r"\((\w+\.[WE]\d+)\)", done.stdout + done.stderr))
    assert found <= NEEDS_A_REAL_DOMAIN, done.stdout + done.stderr
