"""Fault: the model over budget (``budget.rate: 50/s`` while clients send several hundred req/s).

Shadow stage (``loadtests/run.sh over-budget``): copies beyond the budget are not sent
(``model_calls_total{result="skipped_rate"}``); the client is unaffected. Autonomous stage
(``loadtests/run.sh over-budget-autonomous``): beyond the budget the legacy stub answers
(``fallbacks_total{reason="budget"}``), so most answers are ``[primary]``, none fails.
"""

import os

from _base import DecisionUser


class OverBudgetUser(DecisionUser):
    stage = os.environ.get("LOADTEST_STAGE", "shadow")
