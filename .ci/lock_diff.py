"""Print each installed package whose version differs from requirements.lock's (moved, new or gone)."""

import importlib.metadata
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


locked: dict[str, set[str]] = {}
for line in (REPO / "requirements.lock").read_text().splitlines():
    match = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
    if match:
        locked.setdefault(normal(match.group(1)), set()).add(match.group(2))
installed = {normal(d.metadata["Name"]): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
moved = sorted(f"{name} {'/'.join(sorted(locked[name]))} -> {version}" for name, version in installed.items()
               if name in locked and version not in locked[name])
print(f"moved from requirements.lock ({len(moved)}): " + ("; ".join(moved) if moved else "none"))
