"""Print each installed package whose version differs from requirements.lock's (moved, new or gone)."""

import importlib.metadata

from lockfile import locked, normal

pins = locked()
installed = {normal(d.metadata["Name"]): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
moved = sorted(f"{name} {'/'.join(sorted(pins[name]))} -> {version}" for name, version in installed.items()
               if name in pins and version not in pins[name])
print(f"moved from requirements.lock ({len(moved)}): " + ("; ".join(moved) if moved else "none"))
