"""Stage control: evaluates each route's policy, persists transitions, serves the operator.

Every replica runs a loop per route (every ``evaluate_every``, or ``sync_every`` without a policy):
read the stored state (adopting a change made by another replica or the admin API), fetch the window
statistics the policy needs, :func:`proxy.policy.evaluate`, and apply the verdict with a
compare-and-set on the state's version. A replica that loses the race adopts the winner's state, so
each transition happens once and is recorded once, with its evidence, by the replica that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from proxy.audit import jcs_value
from proxy.config import Policy
from proxy.log import get_logger
from proxy.metrics import Metrics
from proxy.policy import Action, BudgetTerms, Verdict, evaluate, evaluate_gate, gate_name, next_gate, rule_fires
from proxy.policy import windows_needed as policy_windows
from proxy.records import base_record
from proxy.routes import RouteRuntime, RouteTable
from proxy.stages import Actor, RouteState, Stage
from proxy.store import Store, StoreError
from proxy.tasks import TaskOwner
from proxy.windows import WindowStats

log = get_logger("proxy.stages")
_CAS_ATTEMPTS = 5


class NotFound(Exception):
    """No such route."""


class Conflict(Exception):
    """The operation does not apply to the route's current state (e.g. nothing pending)."""


def budget_terms(route: RouteRuntime) -> BudgetTerms:
    budget = route.cfg.budget
    return BudgetTerms(
        rate_per_s=budget.rate.per_second if budget.rate else None,
        cost_limit=budget.cost.limit if budget.cost else None,
        cost_window_s=budget.cost.window if budget.cost else None,
    )


class StageController:
    """Owns every route's stage state on this replica."""

    def __init__(
        self,
        routes: RouteTable,
        store: Store,
        policies: Mapping[str, Policy],
        submit: Callable[[dict[str, Any]], bool],
        metrics: Metrics,
        owner: TaskOwner,
        *,
        clock: Callable[[], float] = time.time,
        sync_every_s: float = 5.0,
        room: Callable[[], bool] = lambda: True,
    ) -> None:
        self.routes = routes
        self.store = store
        self.policies = policies
        self._submit = submit
        self._metrics = metrics
        self._owner = owner
        self._clock = clock
        self._sync_every = sync_every_s
        self._room = room
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Load (or initialise) each route's state and start its evaluation loop."""
        now = self._clock()
        for route in self.routes.routes:
            initial = RouteState(route.cfg.stage, entered_at=now)
            try:
                state = await self.store.init_route_state(route.name, initial)
            except StoreError as exc:
                log.error("stage.store_unavailable", route=route.name, error=str(exc), stage=initial.stage.value)
                state = initial
            self._adopt(route, state)
            self._owner.spawn(self._loop(route), name=f"stage-{route.name}")
        watch = getattr(self.store, "watch", None)
        if watch is not None:  # a shared store tells every replica at once; the loops are the fallback
            self._owner.spawn(watch(self._changed, self._stopping), name="stage-watch")

    def _changed(self, name: str) -> None:
        route = self.routes.by_name.get(name)
        if route is not None:
            self._owner.spawn(self._refresh(route), name=f"stage-refresh-{name}")

    async def _refresh(self, route: RouteRuntime) -> None:
        try:
            await self._current(route)
        except StoreError as exc:
            log.warning("stage.refresh_failed", route=route.name, error=str(exc))

    def _adopt(self, route: RouteRuntime, state: RouteState) -> None:
        previous = route.state
        if previous == state:
            return  # the store is the authority: any other state is adopted (it may have lost its own)
        if previous is not None and previous.stage is not state.stage:
            log.info("stage.adopted", route=route.name, stage=state.stage.value, version=state.version)
        route.set_state(state)

    async def _loop(self, route: RouteRuntime) -> None:
        policy = self.policies.get(route.name)
        interval = policy.evaluate_every if policy is not None else self._sync_every
        while True:
            await asyncio.sleep(interval)
            try:
                await self.evaluate(route.name)
            except StoreError as exc:
                self._metrics.store_errors.labels("stage").inc()
                log.warning("stage.evaluate_failed", route=route.name, error=str(exc))
            except Conflict as exc:
                log.warning("stage.evaluate_deferred", route=route.name, reason=str(exc))
            except Exception:
                log.exception("stage.evaluate_crashed", route=route.name)

    # --- automatic ------------------------------------------------------------------------------

    async def _current(self, route: RouteRuntime) -> RouteState:
        state = await self.store.route_state(route.name)
        if state is None:
            state = await self.store.init_route_state(route.name, route.state or RouteState(route.cfg.stage))
        self._adopt(route, state)
        return state

    async def _stats(self, route: RouteRuntime, state: RouteState, windows: set[float]) -> dict[float, WindowStats]:
        now = self._clock()
        out = {}
        for window in windows:
            since = max(now - window, state.entered_at)
            out[window] = await self.store.window_stats(route.name, state.epoch, since, now)
        return out

    async def evaluate(self, name: str) -> Verdict | None:
        """One evaluation of the route's policy, applied. None for a route without a policy."""
        route = self._route(name)
        state = await self._current(route)
        policy = self.policies.get(name)
        if policy is None:
            return None
        stats = await self._stats(route, state, policy_windows(policy, state.stage))
        verdict = evaluate(policy, state, stats, self._clock(), budget_terms(route))
        if verdict.action in (Action.PROMOTE, Action.ROLLBACK):
            assert verdict.to is not None
            new = state.with_stage(verdict.to, self._clock())
        elif verdict.action is Action.PENDING:
            new = state.changed(pending=gate_name(state.stage), pending_evidence=jcs_value(verdict.evidence))
        else:
            return verdict
        await self._commit(route, state, new, verdict.action.value, Actor.POLICY, verdict.reason, verdict.evidence)
        return verdict

    async def _commit(
        self,
        route: RouteRuntime,
        old: RouteState,
        new: RouteState,
        event: str,
        actor: Actor,
        reason: str,
        evidence: dict[str, Any],
    ) -> bool:
        if not self._room():  # a transition nobody could read in the audit trail must not happen
            raise Conflict("the audit queue is full: the transition would not be recorded; try again")
        if not await self.store.cas_route_state(route.name, old.version, new):
            current = await self.store.route_state(route.name)
            if current is not None:
                self._adopt(route, current)
            return False
        self._adopt(route, new)
        record = base_record("transition", self._clock(), route.name)
        record.update(
            {"event": event, "from": old.stage.value, "to": new.stage.value, "actor": actor.value},
            reason=reason, evidence=jcs_value(evidence), version=new.version, epoch=new.epoch,
        )  # fmt: skip
        self._submit(record)
        for listener in self.listeners:
            listener(record)
        if old.stage is not new.stage:
            self._metrics.transitions.labels(route.name, old.stage.value, new.stage.value).inc()
        log.info(
            "stage.transition", route=route.name, kind=event, from_stage=old.stage.value,
            to_stage=new.stage.value, actor=actor.value, reason=reason,
        )  # fmt: skip
        return True

    # --- by hand (admin API) ----------------------------------------------------------------------

    def _route(self, name: str) -> RouteRuntime:
        route = self.routes.by_name.get(name)
        if route is None:
            raise NotFound(f"no route named {name!r}")
        return route

    async def _change(
        self, name: str, plan: Callable[[RouteState], tuple[RouteState, str, dict[str, Any]] | None], reason: str
    ) -> tuple[RouteState, bool]:
        """Apply ``plan(state) -> (new, event, evidence) | None`` with compare-and-set retries."""
        route = self._route(name)
        for _ in range(_CAS_ATTEMPTS):
            state = await self._current(route)
            planned = plan(state)
            if planned is None:
                return state, False
            new, event, evidence = planned
            if await self._commit(route, state, new, event, Actor.ADMIN, reason, evidence):
                return new, True
        raise Conflict(f"route {name!r} kept changing; try again")

    async def set_stage(self, name: str, stage: Stage, reason: str) -> tuple[RouteState, bool]:
        def plan(state: RouteState) -> tuple[RouteState, str, dict[str, Any]] | None:
            if state.stage is stage:
                return None
            return state.with_stage(stage, self._clock()), "set", {}

        return await self._change(name, plan, reason or f"set to {stage.value} by hand")

    async def approve(self, name: str, reason: str) -> tuple[RouteState, bool]:
        def plan(state: RouteState) -> tuple[RouteState, str, dict[str, Any]] | None:
            if state.pending is None or state.pending != gate_name(state.stage):
                raise Conflict(f"route {name!r} has no promotion pending approval")
            nxt = state.stage.next()
            assert nxt is not None
            return state.with_stage(nxt, self._clock()), "approve", dict(state.pending_evidence or {})

        return await self._change(name, plan, reason or "pending promotion approved")

    async def hold(self, name: str, reason: str, hold: bool = True) -> tuple[RouteState, bool]:
        def plan(state: RouteState) -> tuple[RouteState, str, dict[str, Any]] | None:
            if state.hold is hold:
                return None
            return state.changed(hold=hold), "hold" if hold else "release", {}

        default = "automatic transitions stopped" if hold else "automatic transitions resumed"
        return await self._change(name, plan, reason or default)

    # --- views --------------------------------------------------------------------------------

    async def analysis(self, name: str) -> dict[str, Any]:
        """The next promotion gate's verdict; in autonomous stage, the rollback rules as checks."""
        route = self._route(name)
        policy = self.policies.get(name)
        if policy is None:
            raise NotFound(f"route {name!r} has no policy")
        state = await self._current(route)
        stats = await self._stats(route, state, policy_windows(policy, state.stage))
        found = next_gate(policy, state.stage)
        if found is not None:
            gate_id, gate = found
            verdict = evaluate_gate(gate_id, gate, stats[gate.window], state, self._clock(), budget_terms(route))
            return {"route": name, "stage": state.stage.value, **verdict.to_json()}
        checks = []
        for index, rule in enumerate(policy.rollback):
            breaches = rule_fires(rule, stats[rule.window])
            checks.append(
                {"name": f"rollback_rule_{index}", "value": breaches, "threshold": None, "pass": not breaches}
            )
        passed = all(c["pass"] for c in checks)
        return {"route": name, "stage": state.stage.value, "gate": None, "pass": passed, "checks": checks}

    async def view(self, name: str) -> dict[str, Any]:
        """One route for ``GET /v1/routes``: stage, hold, pending and the current window's figures."""
        route = self._route(name)
        state = route.state or RouteState(route.cfg.stage)
        with contextlib.suppress(StoreError):
            state = await self._current(route)
        policy = self.policies.get(name)
        window = _view_window(policy, state.stage)
        now = self._clock()
        figures: dict[str, Any] = {"window_s": window, "dwell_s": round(max(0.0, now - state.entered_at), 3)}
        with contextlib.suppress(StoreError):
            stats = await self.store.window_stats(name, state.epoch, max(now - window, state.entered_at), now)
            figures.update(stats.figures())
        return {
            "name": name,
            "stage": state.stage.value,
            "hold": state.hold,
            "pending": state.pending,
            "version": state.version,
            "entered_at": state.entered_at,
            "policy": name in self.policies,
            "window": figures,
            "budget": route.budget_view(),
        }


def _view_window(policy: Policy | None, stage: Stage) -> float:
    if policy is None:
        return 3600.0
    found = next_gate(policy, stage)
    if found is not None:
        return found[1].window
    return max((rule.window for rule in policy.rollback), default=3600.0)
