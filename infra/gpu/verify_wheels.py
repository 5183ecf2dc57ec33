"""Checks that the carried wheel set is complete for the GPU image: run by a clean Python 3.12 after
`pip install --no-index --no-deps --target SITE WHEELS/*.whl` (what check.sh does there).

    python3.12 infra/gpu/verify_wheels.py SITE infra/gpu/image-packages.txt [--import MOD ...]

Every requirement (markers evaluated for this interpreter, no extras) of every distribution installed in SITE
must be met by SITE itself (name and version) or named in the image's package list (name only: the image's
versions are not known here). A requirement met by neither would make `import` fail on the GPU machine, where
nothing can be fetched. --import then imports modules from SITE, proving the binary wheels load in 3.12.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import re
import sys

from pip._vendor.packaging.requirements import Requirement  # a clean venv has pip's vendored copy only


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages(path: str) -> set[str]:
    words = []
    for line in open(path):
        words += line.split("#", 1)[0].split()
    return {norm(w) for w in words}


def requirements(site: str):
    """(distribution name, requirement) for every requirement that applies here (markers, no extras)."""
    for dist in md.distributions(path=[site]):
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                yield dist.metadata["Name"], req


def unmet(site: str, image: set[str]) -> list[str]:
    """'dist: requirement (why)' for each requirement neither SITE nor the image meets."""
    carried = {norm(d.metadata["Name"]): d.version for d in md.distributions(path=[site])}
    problems = []
    for owner, req in requirements(site):
        name = norm(req.name)
        if name in carried:
            if carried[name] not in req.specifier:
                problems.append(f"{owner}: {req} (carried {carried[name]})")
        elif name not in image:
            problems.append(f"{owner}: {req} (neither carried nor in the image)")
    return problems


def from_image(site: str) -> list[str]:
    """The requirements left to the image: what a stand-in environment must provide to import the set."""
    carried = {norm(d.metadata["Name"]) for d in md.distributions(path=[site])}
    return sorted({norm(req.name) for _, req in requirements(site)} - carried)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site")
    ap.add_argument("image_packages")
    ap.add_argument("--import", dest="modules", nargs="*", default=[])
    ap.add_argument("--from-image", action="store_true", help="only print the requirements left to the image")
    a = ap.parse_args()
    if a.from_image:
        print(" ".join(from_image(a.site)))
        return 0
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in md.distributions(path=[a.site]))
    print(f"{len(dists)} distributions in {a.site}: {' '.join(dists)}")
    problems = unmet(a.site, image_packages(a.image_packages))
    for p in problems:
        print(f"UNMET {p}")
    sys.path.insert(0, a.site)
    for mod in a.modules:
        m = importlib.import_module(mod)
        where = getattr(m, "__file__", "") or ""
        if not where.startswith(a.site):
            problems.append(f"import {mod} came from {where}, not the carried wheels")
        print(f"import {mod}: ok ({getattr(m, '__version__', '')})")
    print("wheel set complete" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
