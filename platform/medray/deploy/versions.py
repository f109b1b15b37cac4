"""Version agreement: Ray, Python, torch and medray versions match across every place that names them.

The pins (requirements.txt: ``ray[...]==X``; pyproject.toml: version, requires-python, ray range;
Makefile: ``torch==Y``) must agree with the Dockerfile's ARG defaults and base image, and with every
image tag (``<repo>:<medray>-ray<X>-py<NNN>-<cpu|gpu>``) and ``rayVersion`` in ``k8s/``.

    python -m medray.deploy.versions [--repo-root .]      # exit 1 and list every mismatch
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

IMAGE_TAG = re.compile(r"^(?P<repo>[^:@]+):(?P<medray>[^-]+)-ray(?P<ray>[0-9.]+)-py(?P<py>[0-9]+)-(?P<variant>cpu|gpu)$")
RAY_BASE = "rayproject/ray"
VARIANTS = ("cpu", "gpu")


@dataclass(frozen=True)
class Pins:
    """The versions the Python packaging pins: the reference every other place must match."""

    ray: str
    ray_range: str
    requires_python: str
    medray: str
    torch: str | None


def python_tag(version: str) -> str:
    """'3.11' → 'py311' (the Ray image naming)."""
    major, minor = version.split(".")[:2]
    return f"py{major}{minor}"


def tag_python(tag: str) -> str:
    """'py311' / '311' → '3.11'."""
    digits = tag.removeprefix("py")
    return f"{digits[0]}.{digits[1:]}"


def read_pins(root: str | Path) -> Pins:
    root = Path(root)
    requirements = (root / "requirements.txt").read_text()
    match = re.search(r"^ray(\[[^\]]*\])?==([0-9][0-9.]*)\s*$", requirements, re.MULTILINE)
    ray = match.group(2) if match else ""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    ray_range = next((re.sub(r"^ray(\[[^\]]*\])?", "", dep) for dep in project.get("dependencies", [])
                      if re.match(r"^ray(\[|=|<|>|~|!|$)", dep)), "")
    makefile = root / "Makefile"
    torch = re.search(r"torch==([0-9][0-9.]*)", makefile.read_text()) if makefile.is_file() else None
    return Pins(ray=ray, ray_range=ray_range, requires_python=project.get("requires-python", ""),
                medray=project.get("version", ""), torch=torch.group(1) if torch else None)


def dockerfile_args(path: str | Path) -> tuple[dict[str, str], list[str]]:
    """(ARG defaults, first declaration wins; FROM image references) of a Dockerfile."""
    args: dict[str, str] = {}
    froms: list[str] = []
    text = re.sub(r"\\\n", " ", Path(path).read_text())
    for line in text.splitlines():
        line = line.strip()
        if m := re.match(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?", line, re.IGNORECASE):
            if m.group(2) is not None:
                args.setdefault(m.group(1), m.group(2).strip("\"'"))
        elif m := re.match(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", line, re.IGNORECASE):
            froms.append(m.group(1))
    return args, froms


def expand(reference: str, args: dict[str, str]) -> str:
    """Substitute ${NAME} / $NAME with the given ARG values."""
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), reference)


def manifest_containers(path: str | Path) -> Iterator[tuple[str, dict]]:
    """('file:Kind/name/.../containers/i', container) for every container of every pod template."""
    import yaml

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for index, container in enumerate(value):
                        if isinstance(container, dict):
                            yield f"{where}/{key}/{index}", container
                else:
                    yield from walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, item in enumerate(node):
                yield from walk(item, f"{where}/{index}")

    for doc in yaml.safe_load_all(Path(path).read_text()):
        if isinstance(doc, dict):
            yield from walk(doc, f"{Path(path).name}:{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}")


def manifest_ray_versions(path: str | Path) -> Iterator[tuple[str, str]]:
    """('file:Kind/name', rayVersion) of every RayCluster spec in a manifest (also inside RayJob/RayService)."""
    import yaml

    for doc in yaml.safe_load_all(Path(path).read_text()):
        if not isinstance(doc, dict):
            continue
        spec = doc.get("spec") or {}
        where = f"{Path(path).name}:{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        for key, cluster in (("spec", spec if doc.get("kind") == "RayCluster" else None),
                             ("spec/rayClusterSpec", spec.get("rayClusterSpec")),
                             ("spec/rayClusterConfig", spec.get("rayClusterConfig"))):
            if isinstance(cluster, dict):
                yield f"{where}/{key}", str(cluster.get("rayVersion", "<unset>"))


def manifest_paths(root: str | Path) -> list[Path]:
    k8s = Path(root) / "k8s"
    return sorted([*k8s.glob("*.yaml"), *k8s.glob("templates/*.yaml")])


def version_problems(root: str | Path = ".") -> list[str]:
    """Every disagreement between the pins, the Dockerfile and k8s/ ([] = all agree)."""
    from packaging.specifiers import SpecifierSet

    root = Path(root)
    pins = read_pins(root)
    problems: list[str] = []
    if not pins.ray:
        return ["requirements.txt: no exact Ray pin (ray[...]==X.Y.Z); it is the reference version"]
    if pins.ray_range and pins.ray not in SpecifierSet(pins.ray_range):
        problems.append(f"pyproject.toml: ray{pins.ray_range} excludes the pinned ray=={pins.ray}")

    args, froms = dockerfile_args(root / "Dockerfile")
    python = tag_python(args.get("PYTHON_TAG", "py?"))
    if args.get("RAY_VERSION") != pins.ray:
        problems.append(f"Dockerfile: ARG RAY_VERSION={args.get('RAY_VERSION')} but requirements.txt pins ray=={pins.ray}")
    if pins.requires_python and python not in SpecifierSet(pins.requires_python):
        problems.append(f"Dockerfile: ARG PYTHON_TAG={args.get('PYTHON_TAG')} (Python {python}) is outside "
                        f"pyproject.toml requires-python {pins.requires_python}")
    if pins.torch and args.get("TORCH_VERSION") != pins.torch:
        problems.append(f"Dockerfile: ARG TORCH_VERSION={args.get('TORCH_VERSION')} but the Makefile installs torch=={pins.torch}")
    if len(froms) != 1:
        problems.append(f"Dockerfile: expected one FROM, found {froms}")
    for variant in VARIANTS:
        want = f"{RAY_BASE}:{pins.ray}-{python_tag(python)}-{variant}"
        got = [expand(ref, {**args, "VARIANT": variant}) for ref in froms]
        if want not in got:
            problems.append(f"Dockerfile: FROM {froms} builds {got} for VARIANT={variant}; expected {want}")

    for path in manifest_paths(root):
        for where, version in manifest_ray_versions(path):
            if version != pins.ray:
                problems.append(f"{where}: rayVersion {version} but requirements.txt pins ray=={pins.ray}")
        for where, container in manifest_containers(path):
            image = str(container.get("image", ""))
            match = IMAGE_TAG.match(image)
            if not match:
                problems.append(f"{where}: image {image!r} is not <repo>:<medray>-ray<X>-py<NNN>-<cpu|gpu>")
                continue
            wants_gpu = "nvidia.com/gpu" in ((container.get("resources") or {}).get("limits") or {})
            expected = {"medray": pins.medray, "ray": pins.ray, "py": python_tag(python).removeprefix("py"),
                        "variant": "gpu" if wants_gpu else "cpu"}
            for field, value in expected.items():
                if match.group(field) != value:
                    problems.append(f"{where}: image {image} has {field} {match.group(field)!r}, expected {value!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medray.deploy.versions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-root", default=".", help="repository root (default: current folder)")
    args = parser.parse_args(argv)
    problems = version_problems(args.repo_root)
    for problem in problems:
        print(f"version mismatch: {problem}", file=sys.stderr)
    if not problems:
        pins = read_pins(args.repo_root)
        print(f"versions agree: ray {pins.ray}, medray {pins.medray}, torch {pins.torch}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
