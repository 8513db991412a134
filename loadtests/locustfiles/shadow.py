"""Shadow stage: the legacy stub answers every client, the model gets a concurrent copy.

Checks per response: 200, ``X-Served-By: primary``, ``X-Stub: legacy``, a JSON decision.

    loadtests/run.sh shadow        # stubs + proxy (loadtests/configs/shadow.yaml) + this file, headless

By hand, against a running proxy: ``locust -f loadtests/locustfiles/shadow.py --headless -u 32 -r 32
-t 15s --host http://127.0.0.1:18180``.
"""

from _base import DecisionUser


class ShadowUser(DecisionUser):
    stage = "shadow"
