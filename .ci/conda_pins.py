"""Write conda.yaml: Python 3.11 and, through pip, each of pyproject.toml's dependencies at the version
requirements.lock gives it (the lock's Python 3.11 line), then the project itself."""

import re
import tomllib
from pathlib import Path

from lockfile import locked, normal

REPO = Path(__file__).resolve().parents[1]

pins = {name: version for name, versions in locked(python_3_11_only=True).items() for version in sorted(versions)}
names = [re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
         for requirement in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
missing = [name for name in names if normal(name) not in pins]
if missing:
    raise SystemExit(f"requirements.lock misses {missing}: run bash .ci/lock")
lines = ["# Written by .ci/conda_pins.py (bash .ci/lock) from pyproject.toml and requirements.lock: edit those.",
         "name: wbc", "channels:", "  - conda-forge", "dependencies:", "  - python=3.11", "  - pip", "  - pip:"]
lines += [f"      - {name}=={pins[normal(name)]}" for name in names]
lines += ["      # the project itself (this folder), so that `import wbc` works in the conda env", "      - -e ."]
(REPO / "conda.yaml").write_text("\n".join(lines) + "\n")
print(f"requirements.lock: {len(pins)} packages; conda.yaml pins its {len(names)} to it")
