"""`--set component.key=value`: run an evaluation with one config value changed, for the A/B comparisons on val
that decide settings such as the landmarker's `refinements` or the regressor's `test_time_shift`."""

from __future__ import annotations

import json


def parse_overrides(pairs: list[str]) -> dict[str, dict]:
    """["landmarker.refinements=1"] -> {"landmarker": {"refinements": 1}} (values read as JSON, else as text)."""
    overrides: dict[str, dict] = {}
    for pair in pairs:
        target, equals, text = pair.partition("=")
        component, dot, key = target.partition(".")
        if not (equals and dot and component and key):
            raise SystemExit(f"--set expects component.key=value, got {pair!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        overrides.setdefault(component, {})[key] = value
    return overrides


def apply_overrides(components: dict, overrides: dict[str, dict]) -> None:
    """Change config values the components read at inference; a key a component's config lacks is an error."""
    for name, values in overrides.items():
        if name not in components:
            raise SystemExit(f"--set: no component {name!r} here; expected one of {sorted(components)}")
        unknown = set(values) - set(components[name].config)
        if unknown:
            raise SystemExit(f"--set: {name} has no config key {sorted(unknown)}")
        components[name].register_to_config(**values)
