"""The dependency floors in pyproject.toml are no lower than the code needs.

Each row names an API the project relies on, the release that brought it and where the code uses it. The test
fails when a floor drops below its newest row, when the installed version lacks the API, or when the code stops
using it (then the row, and maybe the floor, should go). The releases were read from the packages themselves:
ray 2.40.0's `ray/tune/__init__.py` has no RunConfig, FailureConfig or report and 2.41.0's has all three; ray 2.58.1
has no `enable_token_auth_by_default` and 2.59.0 calls it in `ray.init` for a new local cluster; numpy added
`np.trapezoid` in 2.0 (NumPy 2.0 release notes: `trapz` renamed).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]

# (distribution, the release that brought the API, the API as an importable dotted name, how the source uses it)
NEEDED = [
    ("numpy", "2.0", "numpy.trapezoid", "np.trapezoid("),
    ("ray", "2.41", "ray.tune.RunConfig", "tune.RunConfig("),
    ("ray", "2.41", "ray.tune.FailureConfig", "tune.FailureConfig("),
    ("ray", "2.41", "ray.tune.report", "tune.report("),
    # the launch keeps Ray's default of token authentication for a local cluster and tells the user how to get in
    ("ray", "2.59", "ray._private.authentication.authentication_token_setup.enable_token_auth_by_default",
     "ray get-auth-token"),
]


def requirement_lists() -> dict[str, list[str]]:
    """Every `name = [...]` list of pyproject.toml, as strings: "dependencies" and each extra among them (read by
    hand: tomllib is Python 3.11+, the project supports 3.10)."""
    text = (REPO / "pyproject.toml").read_text()
    lists = re.findall(r"^([\w-]+) = \[(.*?)\]\s*$", text, re.M | re.S)
    # an item is a quoted string at the start of a line or after ", "; quotes inside comments are not items
    items = re.compile(r'(?:^\s*|, )"([^"]+)"', re.M)
    return {name: items.findall(body) for name, body in lists}


def floors() -> dict[str, Version]:
    out = {}
    for line in requirement_lists()["dependencies"]:
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        if lows:
            out[req.name] = max(lows)
    return out


def resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def source_text() -> str:
    return "".join(p.read_text() for top in ("orchestrator", "pixelreg_core") for p in (REPO / top).rglob("*.py"))


@pytest.mark.parametrize("dist, since, api, used_as", NEEDED, ids=[row[2] for row in NEEDED])
def test_floor_covers_every_api_the_code_uses(dist, since, api, used_as):
    assert floors()[dist] >= Version(since), f"pyproject.toml lets {dist} below {since}, which {api} needs"
    assert callable(resolve(api)) or resolve(api) is not None
    assert used_as in source_text(), f"the code no longer uses {used_as!r}: drop this row (and maybe lower the floor)"


def test_the_lean_install_leaves_corruptions_to_its_extra():
    extras = requirement_lists()
    names = {Requirement(line).name for line in extras["dependencies"]}
    assert "imagecorruptions-imaug" not in names
    assert [Requirement(line).name for line in extras["corruptions"]] == ["imagecorruptions-imaug"]
    assert "pixelreg[corruptions]" in extras["dev"]  # the tests cover the corruptions attack too
