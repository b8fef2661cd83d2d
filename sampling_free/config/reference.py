"""Write the config reference (every key, type, default, meaning) from the schema:
``python -m sampling_free.config.reference > docs/config_reference.md``."""
from __future__ import annotations

import sys

from .loader import ALL_KEYS, _type_name


def render() -> str:
    lines = ["# Config reference", "",
             "Generated from `sampling_free/config/schema.py` by `python -m sampling_free.config.reference`; "
             "a test keeps it current.", ""]
    section = None
    for key, spec in ALL_KEYS.items():
        top = key.split(".")[0] if "." in key else "(top level)"
        if top != section:
            section = top
            lines += ["", f"## {section}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        choices = f" One of: {', '.join(repr(c) for c in spec.choices)}." if spec.choices else ""
        default = "null" if spec.default is None else repr(spec.default)
        lines.append(f"| `{key}` | {_type_name(spec)} | `{default}` | {spec.help}{choices} |")
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
