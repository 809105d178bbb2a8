"""Print a pip constraints file that holds each direct requirement of pyproject.toml at the lowest
version its range allows (``name>=X`` becomes ``name==X``): `make test-oldest` installs with it,
so the ranges' lower bounds are tested, not assumed. torch is left to TORCH_SPEC.

    python requirements/lowest.py pyproject.toml > lowest.txt
"""

from __future__ import annotations

import sys
import tomllib

from packaging.requirements import Requirement


def lowest_pins(pyproject: str) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = {}
    for text in requirements:
        requirement = Requirement(text)
        if requirement.name in ("torch", "uio_ds"):
            continue
        lower = [s.version for s in requirement.specifier if s.operator in (">=", "==")]
        if lower:
            pins[requirement.name] = f"{requirement.name}=={lower[0]}"
    return sorted(pins.values())


if __name__ == "__main__":
    print("\n".join(lowest_pins(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")))
