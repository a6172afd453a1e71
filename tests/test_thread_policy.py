"""``gradcam explain`` lets the framework's idle OpenMP threads sleep, before the framework loads, unless the
environment chose a policy (``gradcam.cli.explain``)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


def policy_after_import(environment: dict[str, str]) -> str:
    code = "import os, sys, gradcam.cli.explain; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_the_command_sets_a_passive_policy_before_any_framework_loads():
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    assert policy_after_import(environment) == "PASSIVE False"


@pytest.mark.parametrize("chosen", ["ACTIVE", "passive"])
def test_a_policy_the_user_set_stands(chosen):
    assert policy_after_import({**os.environ, "OMP_WAIT_POLICY": chosen}) == f"{chosen} False"
