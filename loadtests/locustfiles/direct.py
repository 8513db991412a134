"""Baseline: no proxy. The same users and requests straight to the legacy stub, so that
``proxied latency - direct latency`` is the proxy's cost as the client sees it (the load generator's own
time, the loopback and the stub's are in both and cancel out).

Checks per response: 200, ``X-Stub: legacy``, no ``X-Served-By`` (nothing in between), a JSON decision.

    loadtests/run.sh direct        # stubs + this file; or BASELINE=1 before any other scenario
"""

from _base import DecisionUser


class DirectUser(DecisionUser):
    stage = "direct"
