"""Helpers for scripts/lowest_versions.sh: the venv that tests warmstart against its lowest declared versions.

Run with the MAIN venv's python (it has torch installed):

- ``link VENV``: symlink torch, torchvision and their CUDA/triton distributions from this interpreter's
  site-packages into VENV's, so VENV uses the same torch build without a second multi-GB copy;
- ``constraints``: print a pip constraints file: the linked distributions at their installed versions, and
  ``name==floor`` for every front-end library, the floor read from pyproject.toml's ``>=`` specifier;
- ``check VENV``: fail unless every pin of the constraints is what VENV has installed.

Example:
    $ .venv/bin/python scripts/lowest_versions.py constraints | grep transformers
    transformers==4.47.0
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
import sysconfig
from pathlib import Path

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# The libraries whose lowest declared version is tested (torch stays the main venv's build).
FLOORED = ["transformers", "peft", "accelerate", "lightning", "ultralytics", "timm", "lightly"]
# torch's own heavy runtime: linked, never installed twice.
_LINKED = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")


def floors(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``{name: lowest version}`` for :data:`FLOORED`, from the ``>=`` specifiers in pyproject.toml.

    Example:
        >>> floors()["transformers"] >= "4"
        True
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs += [s for s in extra if not s.startswith("warmstart")]
    found: dict[str, str] = {}
    for spec in specs:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        lows = [s.version for s in req.specifier if s.operator == ">="]
        if name in FLOORED and lows:
            low = max(lows, key=lambda v: tuple(int(p) for p in re.findall(r"\d+", v)))
            if found.get(name, low) != low:
                raise SystemExit(f"pyproject.toml declares two floors for {name}: {found[name]} and {low}")
            found[name] = low
    missing = sorted(set(FLOORED) - set(found))
    if missing:
        raise SystemExit(f"no '>=' floor for {missing} in pyproject.toml")
    return found


def torch_closure() -> list[md.Distribution]:
    """torch, torchvision and every distribution they need (this interpreter's markers) matching ``_LINKED``."""
    env = default_environment()
    seen: dict[str, md.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [("torch", frozenset()), ("torchvision", frozenset())]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        name = canonicalize_name(name)
        if (name, extras) in done or not _LINKED.match(name):
            continue
        done.add((name, extras))
        dist = seen.setdefault(name, md.distribution(name))
        for spec in dist.requires or []:
            req = Requirement(spec)
            # a requirement applies without an extra, or under one of the extras asked for (cuda-toolkit[cublas])
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in {"", *extras}):
                todo.append((req.name, frozenset(req.extras)))
    return list(seen.values())


def site_packages(venv: Path) -> Path:
    """The purelib folder of ``venv`` (created by ``python -m venv``)."""
    found = sorted(venv.glob("lib/python*/site-packages"))
    if len(found) != 1:
        raise SystemExit(f"expected one site-packages under {venv}, found {found}")
    return found[0]


def link(venv: Path) -> None:
    """Symlink each torch-closure distribution's top-level entries (packages, dist-info) into ``venv``."""
    source = Path(sysconfig.get_paths()["purelib"])
    target = site_packages(venv)
    for dist in torch_closure():
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            src, dst = source / top, target / top
            if src.exists() and not dst.exists() and not dst.is_symlink():
                dst.symlink_to(src.resolve())


def constraints() -> str:
    """The pip constraints file: linked distributions at their installed versions, then the floors."""
    lines = ["# torch and its runtime: the main venv's build (symlinked)"]
    lines += sorted(f"{d.metadata['Name']}=={d.version}" for d in torch_closure())
    lines += ["# the lowest versions pyproject.toml declares"]
    lines += [f"{name}=={version}" for name, version in floors().items()]
    return "\n".join(lines) + "\n"


def check(venv: Path) -> None:
    """Exit non-zero unless ``venv`` has exactly the pinned versions (and torch is still the linked build)."""
    path = [str(site_packages(venv))]
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions(path=path)}
    wrong = []
    for line in constraints().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            have = installed.get(canonicalize_name(name))
            if have is None or Version(have) != Version(version):
                wrong.append(f"{name}: pinned {version}, installed {have}")
    if not (site_packages(venv) / "torch").is_symlink():
        wrong.append("torch is no longer the main venv's build (not a symlink)")
    if wrong:
        raise SystemExit("lowest-versions venv does not match its pins:\n  " + "\n  ".join(wrong))
    print("lowest-versions venv matches its pins:", ", ".join(f"{n}=={installed[n]}" for n in FLOORED))


def main(argv: list[str]) -> None:
    """Command-line entry: ``link VENV`` | ``constraints`` | ``check VENV``."""
    if argv[:1] == ["link"] and len(argv) == 2:
        link(Path(argv[1]))
    elif argv == ["constraints"]:
        sys.stdout.write(constraints())
    elif argv[:1] == ["check"] and len(argv) == 2:
        check(Path(argv[1]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
