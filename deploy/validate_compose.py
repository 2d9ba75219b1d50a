"""Validate docker-compose.yml against the Compose specification, then check the wiring we rely on.

No Docker engine is needed: `compose-spec` (PyPI) parses and validates the file as Compose does.

    python deploy/validate_compose.py docker-compose.yml
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import yaml
from compose_spec import PyCompose

# ${VAR}, ${VAR:-default}, ${VAR-default} and the $$ escape, as Compose interpolates them.
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


def interpolate(text: str, environment: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, default = match.group(1), match.group(2), match.group(3) or ""
        value = environment.get(name)
        if value is None or (operator == ":-" and value == ""):
            return default if operator else ""
        return value

    return _VARIABLE.sub(replace, text)


def check(path: Path) -> list[str]:
    # PyYAML resolves anchors and `<<` merge keys first, as Compose's loader does.
    raw = yaml.safe_load(interpolate(path.read_text(), dict(os.environ)))
    try:
        PyCompose.from_json(json.dumps(raw)).validate()
    except ValueError as exc:
        return [f"not a valid Compose file: {exc}"]
    services = raw["services"]
    problems = []
    expected = {"train", "api", "prometheus", "grafana"}
    if set(services) != expected:
        problems.append(f"services are {sorted(services)}, expected {sorted(expected)}")
    api = services.get("api", {})
    if (
        api.get("depends_on", {}).get("train", {}).get("condition")
        != "service_completed_successfully"
    ):
        problems.append("api must start only after train completed successfully")
    if "models:/models:ro" not in api.get("volumes", []):
        problems.append("api must mount the models volume read-only")
    if "healthcheck" not in api:
        problems.append("api needs a healthcheck")
    for name in ("prometheus", "grafana"):
        for volume in services.get(name, {}).get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./") and not (path.parent / source).exists():
                problems.append(f"{name} mounts {source}, which does not exist")
    return problems


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml")
    problems = check(path)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{path}: valid Compose file, services wired as expected")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
