"""Fault: a failing model (the model stub answers 500 to half of the requests).

Shadow stage (``loadtests/run.sh failing-model``): the client is unaffected (every answer the legacy
stub's, no failure), the errors show in ``model_calls_total{result="error"}``. Autonomous stage
(``loadtests/run.sh failing-model-autonomous``): every failed model call falls back to the legacy stub
(``fallbacks_total{reason="error"}``), so about half the answers are ``[primary]``, still no failure.
"""

import os

from _base import DecisionUser


class FailingModelUser(DecisionUser):
    stage = os.environ.get("LOADTEST_STAGE", "shadow")
