"""Settings for the whole test session: one compute thread per framework in each process.

``make test`` runs two pytest-xdist workers on two cores. With each framework's default pool (a thread per
core) the two workers' threads contend for the cores and every convolution waits on the other worker; one
thread each keeps both cores busy without that. Set before any framework is imported (they read these at
start-up), and inherited by the subprocesses the tests start (the CLI, Ray workers).
"""
from __future__ import annotations

import os

for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
    os.environ.setdefault(variable, "1")
