"""Keep pyproject.toml and environment.yml listing the same packages."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# conda-forge names of packages whose PyPI names differ
CONDA_NAMES = {"torch": "pytorch", "open_clip_torch": "open-clip-torch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    names |= {_name(r) for r in project["optional-dependencies"]["test"]}
    return {CONDA_NAMES.get(name, name) for name in names}


def _environment_names() -> set[str]:
    names = set()
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:"):].splitlines():
        match = re.match(r"^\s{2}- ([A-Za-z0-9_.\-]+)", line)
        if match and match.group(1) not in {"python", "pip"}:
            names.add(match.group(1).lower())
    return names


def test_environment_matches_pyproject():
    assert _environment_names() == _pyproject_names()


def test_versions_match():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    environment = (ROOT / "environment.yml").read_text()
    for requirement in requirements:
        name = _name(requirement)
        specifier = requirement[len(name):].strip()
        conda_name = CONDA_NAMES.get(name, name)
        assert f"- {conda_name}{specifier}" in environment, f"{conda_name}{specifier} missing from environment.yml"
