"""Write ``constraints.txt``: the exact versions of everything ``bilevel[dev,launchers]`` pulls
in, as installed in the current environment (the one CI ran). Used by ``.ci/run`` and the
README (``pip install -c constraints.txt -e .``), so a fresh install resolves the versions the
committed results were made with.

    python scripts/lock.py            # rewrite constraints.txt
    python scripts/lock.py --check    # exit 1 if constraints.txt differs from the environment

Torch is written without its local build tag (``2.13.0``, not ``2.13.0+cpu``), so the same file
serves the CPU and the CUDA wheel.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("dev", "launchers")


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def closure(project: str = "bilevel", extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """Installed name → version for the dependency closure of ``project[extras]``."""
    found: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(project, extras)]
    env = default_environment()
    while todo:
        name, wanted = todo.pop()
        dist = metadata.distribution(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({**env, "extra": e}) for e in ("", *wanted)
            ):
                continue
            key = _name(req.name)
            if key in found:
                continue
            try:
                found[key] = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                continue  # an optional dependency this platform skips
            todo.append((req.name, tuple(sorted(req.extras))))
    return found


def render(versions: dict[str, str]) -> str:
    lines = [
        "# Exact versions of bilevel[dev,launchers] and everything it pulls in, as CI ran them.",
        "# Regenerate: python scripts/lock.py (in the environment CI installed).",
    ]
    for name in sorted(versions):
        version = versions[name].split("+")[0] if name == "torch" else versions[name]
        lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "constraints.txt")
    args = parser.parse_args()
    text = render(closure())
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} differs from the installed environment; run scripts/lock.py")
            return 1
        print(f"{args.out} matches the environment")
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out} ({text.count('==')} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
