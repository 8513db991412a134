"""Assisted stage: the model is asked first (at most ``assisted.max_wait_ms``), its suggestion goes to the
legacy stub as ``X-Model-Suggestion``, and the legacy stub answers the client.

Checks per response: 200, ``X-Served-By: primary``, ``X-Stub: legacy``, a JSON decision. Counts the legacy
stub's ``X-Stub-Suggestion`` (accepted / rejected / invalid; none = no suggestion was shown in time).

    loadtests/run.sh assisted
"""

from _base import DecisionUser


class AssistedUser(DecisionUser):
    stage = "assisted"
