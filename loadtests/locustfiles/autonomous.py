"""Autonomous stage: the model answers the client when it answers in time, validly and confidently
enough; otherwise the legacy stub does (fallback).

Checks per response: 200, ``X-Served-By`` primary or model with the matching ``X-Stub``, a JSON decision.
Requests are named by who served them, so locust shows the model's and the fallback's latency apart.

    loadtests/run.sh autonomous
"""

from _base import DecisionUser


class AutonomousUser(DecisionUser):
    stage = "autonomous"
