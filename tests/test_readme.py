"""The documentation stays whole and true to the code.

README.md is the front door (short, with links); docs/ holds the depth: every setting
is in docs/settings.md, every command in docs/commands.md, and no link leads nowhere.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
README_MAX_WORDS = 1600

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def markdown_files():
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def prose(text):
    """The text without its fenced code blocks (no links or headings in there)."""
    return FENCE.sub("", text)


def anchors(path):
    """The heading anchors of a Markdown file, as GitHub makes them."""
    seen = {}
    result = set()
    for heading in HEADING.findall(prose(path.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def test_every_setting_read_from_the_environment_is_documented():
    settings = (ROOT / "project" / "settings.py").read_text()
    names = set(re.findall(r'env_\w+\(\s*"([A-Z0-9_]+)"', settings))
    assert len(names) > 20
    documented = (DOCS / "settings.md").read_text()
    missing = sorted(name for name in names if f"`{name}`" not in documented)
    assert not missing, f"settings missing from docs/settings.md: {missing}"


def test_every_management_command_is_documented():
    commands = {
        path.stem
        for app in ("dbsync", "hcore", "api")
        for path in (ROOT / app / "management" / "commands").glob("*.py")
        if path.stem != "__init__"
    }
    assert {"hcore_remotesyncdb", "dbsync_status"} <= commands
    documented = (DOCS / "commands.md").read_text()
    missing = sorted(name for name in commands if f"### `manage.py {name}`" not in documented)
    assert not missing, f"commands missing from docs/commands.md: {missing}"


def test_readme_is_a_front_door_not_a_manual():
    words = len(README.split())  # as `wc -w` counts, code blocks included
    assert words <= README_MAX_WORDS, (
        f"README.md has {words} words (at most {README_MAX_WORDS}): move the depth to docs/"
    )


def test_every_relative_link_leads_somewhere():
    broken = []
    for source in markdown_files():
        for target in LINK.findall(prose(source.read_text())):
            if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, fragment = target.partition("#")
            linked = (source.parent / path).resolve() if path else source
            where = f"{source.relative_to(ROOT)}: {target}"
            if not linked.exists():
                broken.append(f"{where} (no such file)")
            elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                broken.append(f"{where} (no such heading)")
    assert len(markdown_files()) > 5
    assert not broken, "broken links:\n" + "\n".join(broken)
