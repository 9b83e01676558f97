"""Readers for the deployment files: compose variables and interpolation, .env files, Dockerfiles.

Small on purpose: enough of each format to check what the tests check, with no Docker needed.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from digit_predictor.config import DataSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
HOSTNET = ROOT / "docker-compose.hostnet.yml"
ENV_EXAMPLE = ROOT / ".env.example"

SETTINGS_VARS = frozenset(name.upper() for name in Settings.model_fields)
# Read by training and evaluation only: documented in .env.example, never given to a container.
DATA_VARS = frozenset(name.upper() for name in DataSettings.model_fields)

# Variables read by compose (or the proxy) and never by the app. Anything else compose or
# .env.example names must be a settings field.
COMPOSE_ONLY_VARS = frozenset(
    {
        "COMPOSE_PROJECT_NAME",  # compose's own: names containers and the data volume
        "WEB_BIND",  # host address the page is published on
        "WEB_PORT",  # host port the page is published on
        "DOMAIN",  # the proxy profile's TLS name
        "ACME_EMAIL",  # the proxy profile's Let's Encrypt account
        "TRAINING_DATA_DIR",  # the trainer profile's MNIST and extra digits (read-only)
    }
)

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME, and $$.
_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    pass


@dataclass(frozen=True)
class Reference:
    name: str
    op: str | None  # ":-", "-", ":?", "?" or None
    arg: str | None


def references(text: str) -> list[Reference]:
    """Every variable a compose file reads, in order (`$$` is a literal dollar, not a read)."""
    found = []
    for match in _REFERENCE.finditer(text):
        if match["escaped"]:
            continue
        name = match["name"] or match["bare"]
        found.append(Reference(name, match["op"], match["arg"]))
    return found


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution, on the raw file text."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        unset_or_empty = not value
        if op == ":-":
            return arg if unset_or_empty else str(value)
        if op == "-":
            return arg if value is None else value
        if op == ":?" and unset_or_empty:
            raise InterpolationError(f"{name}: {arg}")
        if op == "?" and value is None:
            raise InterpolationError(f"{name}: {arg}")
        return value or ""

    return _REFERENCE.sub(substitute, text)


def _interpolate_values(node: Any, env: dict[str, str]) -> Any:
    # Compose substitutes inside the parsed file's string values, not in its raw text.
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_values(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_values(value, env) for key, value in node.items()}
    return node


def load_compose(path: Path = COMPOSE, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The parsed file; with `env`, its ${...} substituted as compose does."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return _interpolate_values(data, env) if env is not None else data


def read_env_file(path: Path = ENV_EXAMPLE) -> tuple[dict[str, str], dict[str, str]]:
    """(active NAME=value lines, commented-out `# NAME=value` lines) of a .env file."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if not match:
            continue
        target = commented if match[1] else active
        assert match[2] not in active and match[2] not in commented, f"{match[2]} twice"
        target[match[2]] = match[3]
    return active, commented


def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run this project's images (built from Dockerfile.*)."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # 0 for the first FROM's stage


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name} ends inside a continuation"
    result = []
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(keyword, args.strip(), stage))
    return result


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def dev_sh_commands() -> list[list[str]]:
    """The commands scripts/dev.sh (`make dev`) starts, as argument lists, `$BIN/` dropped."""
    text = (ROOT / "scripts" / "dev.sh").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('"$BIN/'):
            args = shlex.split(line.rstrip("&").strip())
            args[0] = args[0].removeprefix("$BIN/")
            commands.append(args)
    return commands
