"""Test hosts: the namespace lab of cluster/bench/netlab.py (network namespaces with their own sshd), plus the
pytest marks of the lab tests. Needs root, iproute2 and openssh-server (`.ci/run` installs them)."""

from __future__ import annotations

import importlib.util

import pytest

from cluster.bench.netlab import SUBNET, Lab, LabHost, Prelude, available, lab, leftovers, pids_in, running

TestHost = LabHost  # the name the lab tests know it by

__all__ = [
    "SUBNET",
    "Lab",
    "LabHost",
    "Prelude",
    "TestHost",
    "available",
    "lab",
    "leftovers",
    "marks",
    "pids_in",
    "running",
]


def marks(module: str, extra: str) -> list[pytest.MarkDecorator]:
    """pytestmark for a slow lab test that also needs `module` (installed by Orchard's `extra`)."""
    found = [pytest.mark.slow, pytest.mark.e2e]
    if reason := available():
        found.append(pytest.mark.skip(reason=reason))
    elif importlib.util.find_spec(module) is None:
        found.append(pytest.mark.skip(reason=f"needs {module} (the '{extra}' extra)"))
    return found
