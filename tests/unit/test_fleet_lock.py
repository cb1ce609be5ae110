"""The fleet installs what the tests ran: runtime/fleet-lock.txt pins the runtime's dependencies
at the versions installed here, and covers every one of them."""

from __future__ import annotations

import re
from importlib.metadata import requires, version

from helpers import REPO

LOCK = REPO / "runtime" / "fleet-lock.txt"


def pins() -> dict[str, str]:
    found = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            found[name.lower()] = pinned
    return found


def closure(name: str, seen: set[str]) -> set[str]:
    """A distribution and everything it needs (no extras), as installed here."""
    key = re.split(r"[<>=!~ ;\[]", name, maxsplit=1)[0].lower()
    if key in seen:
        return seen
    seen.add(key)
    for requirement in requires(key) or []:
        if "extra ==" not in requirement:
            closure(requirement, seen)
    return seen


def test_the_lock_pins_the_versions_the_tests_run_with():
    locked = pins()
    for name, pinned in locked.items():
        if name == "setuptools":  # a build tool on the instance: not imported by the tests
            continue
        assert version(name) == pinned, name


def test_the_lock_covers_every_dependency_of_the_runtime():
    needed = set()
    for requirement in requires("pyanamo") or []:
        if "extra ==" not in requirement:
            needed |= closure(requirement, set())
    assert needed <= set(pins()), needed - set(pins())
