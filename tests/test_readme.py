"""README.md is the front door: every setting and every command is documented there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_read_from_the_environment_is_documented():
    settings = (ROOT / "project" / "settings.py").read_text()
    names = set(re.findall(r'env_\w+\(\s*"([A-Z0-9_]+)"', settings))
    assert len(names) > 20
    missing = sorted(name for name in names if f"`{name}`" not in README)
    assert not missing, f"settings missing from README.md: {missing}"


def test_every_management_command_is_documented():
    commands = {
        path.stem
        for app in ("dbsync", "hcore", "api")
        for path in (ROOT / app / "management" / "commands").glob("*.py")
        if path.stem != "__init__"
    }
    assert {"hcore_remotesyncdb", "dbsync_status"} <= commands
    missing = sorted(name for name in commands if f"### `manage.py {name}`" not in README)
    assert not missing, f"commands missing from README.md: {missing}"
