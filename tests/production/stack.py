"""The production files read as Docker and compose would read them, for the smoke test.

There is no Docker engine here: the Dockerfile's RUN lines and the compose services'
commands, environments and healthchecks are taken from the files and run as processes,
with the container's addresses and paths mapped to the test's own (``Relocation``).
"""

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.browser import wait_for
from tests.celery_helpers import Process

ROOT = Path(__file__).resolve().parent.parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"


# --- Dockerfile -----------------------------------------------------------------------


def dockerfile_instructions(path=DOCKERFILE):
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_run_line(containing):
    """The one RUN line whose command contains ``containing``."""
    lines = [args for kw, args in dockerfile_instructions() if kw == "RUN" and containing in args]
    assert len(lines) == 1, f"{len(lines)} RUN lines of the Dockerfile contain {containing!r}"
    return lines[0]


def dockerfile_env():
    """The ENV instructions (``KEY=value`` form) as a dict."""
    env = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ENV":
            for item in shlex.split(arguments):
                key, _, value = item.partition("=")
                env[key] = value
    return env


# --- .env and docker-compose.yml ------------------------------------------------------


def read_env_file(path):
    """KEY=value lines, as compose reads an env file (comments and blanks skipped)."""
    env = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def compose():
    return yaml.safe_load(COMPOSE_FILE.read_text())


INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text, variables):
    """Compose's interpolation: ``${NAME}``, ``${NAME:-default}``, ``${NAME:?error}``,
    and ``$$`` for a literal ``$``."""

    def replace(match):
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        value = variables.get(name)
        if operator in (":-", "-") and not value:
            return argument
        if operator in (":?", "?") and not value:
            raise KeyError(f"{name}: {argument}")
        return value or ""

    return INTERPOLATION.sub(replace, text)


@dataclass
class Relocation:
    """What differs between a container of the stack and this machine."""

    postgres: str  # host:port for "postgres:5432"
    redis: str  # host:port for "redis:6379"
    paths: dict  # container path -> local path

    def apply(self, value):
        value = value.replace("@postgres:5432/", f"@{self.postgres}/")
        value = value.replace("redis://redis:6379/", f"redis://{self.redis}/")
        for container_path, local_path in self.paths.items():
            if value == container_path or value.startswith(container_path + "/"):
                value = str(local_path) + value[len(container_path) :]
        return value


def service_env(service, variables, dotenv, relocation, base):
    """A service's environment as compose builds it: the image's ENV, then its
    env_file (.env), then its ``environment:``, interpolated; then relocated."""
    env = dict(dockerfile_env())
    env.update(dotenv)
    for key, value in (service.get("environment") or {}).items():
        env[key] = interpolate("" if value is None else str(value), variables)
    env = {key: relocation.apply(value) for key, value in env.items()}
    return {**env, **base}


def command_args(service, variables):
    """A service's ``command`` as the argument list compose gives the container."""
    command = service["command"]
    if isinstance(command, str):
        return shlex.split(interpolate(command, variables))
    return [interpolate(str(arg), variables) for arg in command]


def healthcheck_args(service, variables):
    """(argv, timeout in seconds) of a service's healthcheck ``test``."""
    check = service["healthcheck"]
    test = check["test"]
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    kind, *rest = test
    rest = [interpolate(str(arg), variables) for arg in rest]
    argv = ["/bin/sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest
    assert kind in ("CMD", "CMD-SHELL"), kind
    return argv, duration(check.get("timeout", "30s"))


def duration(text):
    """Compose durations as used here: "10s", "1m", "1m30s"."""
    total = 0
    for amount, unit in re.findall(r"(\d+)(ms|s|m|h)", str(text)):
        total += int(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


# --- processes ------------------------------------------------------------------------


@dataclass
class Service(Process):
    """A long-running process of the stack: a Process whose log keeps the output of its
    earlier runs (a service restarted by the test appends to it)."""

    name: str = ""
    log_mode: str = "a"


def wait_until(predicate, timeout, what, every=0.5):
    return wait_for(predicate, timeout=timeout, every=every, what=what)
