"""Fault: a slow model (the model stub answers after 200 ms; the primary in a few ms).

In shadow stage (``loadtests/run.sh slow-model``) the client must not see the model at all: its latency
stays the primary's plus the proxy's overhead. In assisted stage (``loadtests/run.sh
slow-model-assisted``, max_wait_ms 150) the client waits at most max_wait_ms, and no suggestion arrives.

Same checks as the stage's file, plus a count of responses slower than ``LOADTEST_SLOW_MS`` (the runner
sets it to the model's latency): in shadow stage that count must be 0.
"""

import os

from _base import DecisionUser


class SlowModelUser(DecisionUser):
    stage = os.environ.get("LOADTEST_STAGE", "shadow")
