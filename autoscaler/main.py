"""`handin autoscaler`: every few seconds read the queues and deadlines, decide, apply, explain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from autoscaler.forecast import ArrivalCurve, Forecast, forecast
from autoscaler.history import HistoryLearner
from autoscaler.history import prior as history_prior
from autoscaler.leader import Elector, LeaseElector, RedisLockElector, default_identity
from autoscaler.metrics import AutoscalerMetrics, serve_http
from autoscaler.policy import (
    CounterSample,
    Decision,
    PoolInputs,
    PoolLimits,
    Recommendation,
    decide,
    queue_read_limit_problems,
)
from autoscaler.sources import QueueDepth, QueueSource, RateMeter, deadline_loads
from autoscaler.state import PoolState, StateStore
from autoscaler.targets import KubernetesTarget, LocalTarget, ScaleTarget, kubernetes_api_client
from core import keys
from core.pipeline import STEPS_BY_NAME
from core.settings import Settings
from core.unit_of_work import unit_of_work

log = logging.getLogger("autoscaler")

NO_FORECAST = Forecast(jobs=0.0, peak_rate=0.0, assignments=0)


def upstream_steps(task: str) -> tuple[str, ...]:
    """Every step a job passes before it reaches `task`'s queue."""
    seen: list[str] = []
    pending = list(STEPS_BY_NAME[task].after) if task in STEPS_BY_NAME else []
    while pending:
        step = pending.pop()
        if step not in seen:
            seen.append(step)
            pending.extend(STEPS_BY_NAME[step].after)
    return tuple(seen)


def pool_limits(settings: Settings, task: str) -> PoolLimits:
    section = settings.autoscaler
    pool = section.pool(task)
    return PoolLimits(
        min_replicas=pool.min_replicas,
        max_replicas=pool.max_replicas,
        target_wait=pool.target_wait_seconds,
        max_scale_up_step=section.max_scale_up_step,
        max_scale_down_step=section.max_scale_down_step,
        scale_down_window=section.scale_down_window_seconds,
        headroom=section.headroom,
        burst_factor=section.burst_factor,
        lead=section.lead,
    )


def arrival_curve(settings: Settings) -> ArrivalCurve:
    section = settings.autoscaler
    return ArrivalCurve(
        section.final_day_share,
        section.final_hour_share,
        section.surge_seconds,
        section.late_share,
        section.late_seconds,
    )


def pool_slots(settings: Settings, task: str) -> int:
    """Jobs one replica usefully runs at once: an io worker's max_jobs, a cpu-bound one's cores."""
    if task in STEPS_BY_NAME and STEPS_BY_NAME[task].profile == "cpu":
        return settings.autoscaler.cpu_slots
    return settings.worker.max_jobs


class Autoscaler:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        sessions: async_sessionmaker[AsyncSession] | None,
        target: ScaleTarget,
        metrics: AutoscalerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        tasks: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sessions = sessions
        self.target = target
        self.metrics = metrics or AutoscalerMetrics()
        self.clock = clock
        section = settings.autoscaler
        # Only the pools it is told to scale: others belong to a fixed count or an external scaler.
        if tasks is None:
            tasks = section.tasks if section.tasks is not None else keys.TASKS
        self.tasks = tuple(tasks)
        self.queues = QueueSource(redis, self.tasks)
        self.meters = {
            task: RateMeter(
                section.default_drain_rate_cpu
                if STEPS_BY_NAME[task].profile == "cpu"
                else section.default_drain_rate_io,
                section.pool(task).drain_rate_per_replica,
                slots=pool_slots(settings, task),
                cpu_bound=STEPS_BY_NAME[task].profile == "cpu",
            )
            for task in self.tasks
        }
        self.history: dict[str, tuple[Recommendation, ...]] = {task: () for task in self.tasks}
        self.last: dict[str, dict[str, object]] = {}
        # Meters, holds and last decisions live in Redis: a restart or a new leader continues.
        self.state = StateStore(redis)
        # Each course's arrival curve and submit share, learned from its past assignments (hourly).
        self.learned = HistoryLearner(history_prior(section))
        # Pools with no state at all yet (a first start): they hold their current size for one window.
        self._fresh = set(self.tasks)
        self._redis_error: str | None = None
        # Set by run(): a change is applied only while this process still leads.
        self.elector: Elector | None = None
        self.external: dict[str, str] = {}  # pool -> who scales it instead (an HPA)
        self._external_error: str | None = None
        # Whether this process published a decision yet, and the (pool, current, desired) of the
        # change it published last, while that change keeps being decided (forgotten on a steady cycle).
        self._announced = False
        self._repeating: tuple[tuple[str, int, int], ...] | None = None

    def check_queue_read_limit(self) -> list[str]:
        problems = queue_read_limit_problems(
            {task: self.settings.autoscaler.pool(task).max_replicas for task in self.tasks},
            self.settings.worker.max_jobs,
            self.settings.worker.queue_read_limit,
        )
        for problem in problems:
            log.warning("queue_read_limit too low for the pool's maximum size", extra={"problem": problem})
        return problems

    async def read_forecast(self, now: float) -> Forecast:
        """The forecast, or none if the database is unreachable: the reactive part still works."""
        if self.sessions is None:
            return NO_FORECAST
        section = self.settings.autoscaler
        try:
            loads = await deadline_loads(
                self.sessions,
                datetime.fromtimestamp(now, UTC),
                timedelta(hours=section.horizon_hours),
                section.submit_share,
            )
            loads = await self.learned.update(self.sessions, self.state, now, loads)
        except Exception:
            log.exception("forecast unavailable; deciding from the queues alone")
            return NO_FORECAST
        return forecast(loads, now, section.lead, arrival_curve(self.settings))

    async def cycle(self, dry_run: bool = False) -> list[Decision]:
        now = self.clock()
        lead = self.settings.autoscaler.lead
        await self._restore()
        depths = await self.read_queues(now, lead)
        ahead = await self.read_forecast(now)
        external = await self.read_external()
        decisions: list[Decision] = []
        for task in self.tasks:
            if external is not None and task in external:
                continue
            # One pool failing (e.g. its Deployment missing) must not stop the others.
            try:
                # Not knowing who else scales a pool, change nothing this cycle rather than fight.
                act = not dry_run and external is not None
                decisions.append(await self._pool_cycle(task, now, depths, ahead, dry_run, act))
            except Exception:
                self.metrics.errors.labels(task).inc()
                log.exception("pool cycle failed", extra={"pool": task})
        await self._publish(decisions, ahead, dry_run)
        if depths is not None:
            await self.state.save(
                {
                    task: PoolState(self.meters[task].state(), self.history[task], self.last.get(task))
                    for task in self.tasks
                }
            )
        self.metrics.cycle_done()
        return decisions

    async def _restore(self) -> None:
        """Take up the saved state (another leader's, or this process's before a restart)."""
        states = await self.state.load()
        for task, state in (states or {}).items():
            if task in self.meters:
                self.meters[task].restore(state.meter)
                self.history[task] = state.history
                if state.last is not None:
                    self.last[task] = state.last
                self._fresh.discard(task)

    async def read_queues(self, now: float, lead: float) -> dict[str, QueueDepth] | None:
        """Every pool's queue, or None if Redis is unreachable: then pools hold, and grow for the forecast."""
        try:
            depths = await self.queues.read(now, lead)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"[:300]
            if reason != self._redis_error:
                log.error(
                    "queues unreadable; holding every pool, growing only for the forecast", extra={"error": reason}
                )
                self._redis_error = reason
            self.metrics.set_degraded("redis unreachable")
            return None
        if self._redis_error is not None:
            log.info("queues readable again")
            self._redis_error = None
        self.metrics.set_degraded(None)
        return depths

    async def read_external(self) -> dict[str, str] | None:
        """Pools another scaler owns (an HPA targets their Deployment); None if that cannot be known now.

        Logged when it changes, not every cycle.
        """
        try:
            external = await self.target.external(self.tasks)
        except Exception as error:
            reason = f"{type(error).__name__}: {getattr(error, 'reason', None) or error}"[:300]
            if reason != self._external_error:
                log.error("cannot tell which pools an HPA scales; changing none until it can", extra={"error": reason})
                self._external_error = reason
            return None
        if self._external_error is not None:
            log.info("pools scaled by an HPA readable again")
            self._external_error = None
        for task, owner in sorted(external.items()):
            if self.external.get(task) != owner:
                log.warning(
                    "pool left alone: its Deployment is scaled by another autoscaler",
                    extra={"pool": task, "owner": owner},
                )
        for task in sorted(set(self.external) - set(external)):
            log.info("pool scaled by this autoscaler again", extra={"pool": task, "was": self.external[task]})
        self.external = external
        return external

    async def _pool_cycle(
        self,
        task: str,
        now: float,
        depths: dict[str, QueueDepth] | None,
        ahead: Forecast,
        dry_run: bool,
        act: bool,
    ) -> Decision:
        current = await self.target.current(task)
        meter = self.meters[task]
        depth = depths[task] if depths is not None else QueueDepth(task, 0, 0, 0, 0, 0)
        if depths is not None:
            meter.observe(
                CounterSample(
                    now,
                    depth.completed,
                    depth.queued,
                    depth.ready,
                    busy=depth.busy_ms / 1000,
                    occupied=depth.occupied_ms / 1000,
                )
            )
        if task in self._fresh:
            # Nothing known of this pool's past: never cut it blind; hold its size for one window.
            self.history[task] = (Recommendation(now, current),)
            self._fresh.discard(task)
        upstream = 0
        if depths is not None:
            upstream = sum(depths[s].ready + depths[s].running for s in upstream_steps(task) if s in depths)
        inputs = PoolInputs(
            task=task,
            ready=depth.ready,
            running=depth.running,
            deferred=depth.deferred,
            due_soon=depth.due_soon,
            current_replicas=current,
            drain_rate=meter.drain_rate,
            arrival_rate=meter.arrival_rate,
            upstream=upstream,
            forecast_jobs=ahead.jobs,
            forecast_peak_rate=ahead.peak_rate,
            slots=meter.slots,
            queues_known=depths is not None,
        )
        decision = decide(inputs, pool_limits(self.settings, task), now, self.history[task])
        self.history[task] = decision.history
        self.last[task] = {"at": now, **decision.as_dict()}
        applied = False
        if decision.changed and act:
            # The cycle may have outlasted the lease (a slow database or API): a standby may lead by now.
            if self.elector is not None and not self.elector.leading():
                log.warning(
                    "not applying: this autoscaler may no longer lead",
                    extra={"pool": task, "desired": decision.desired},
                )
            else:
                await self.target.apply(task, decision.desired)
                applied = True
        self.metrics.record(decision)
        log.info(
            "autoscaler decision",
            extra={
                "decision": decision.as_dict(),
                "dry_run": dry_run,
                "applied": applied,
                "drain_measured": meter.measured,
            },
        )
        return decision

    async def _publish(self, decisions: list[Decision], ahead: Forecast, dry_run: bool) -> None:
        """Decisions that change something go to the staff dashboard, through the audit trail.

        The first cycle is published as it is (the fleet as this process found it); after that
        only a cycle that changes a pool, and not the same change again (a dry run or a failed
        apply repeats it every cycle): a steady fleet adds nothing to the dashboard or the audit
        trail every few seconds. Every cycle is still logged and counted in the metrics.
        """
        if self.sessions is None or not decisions:
            return
        signature = tuple((d.task, d.current, d.desired) for d in decisions)
        changed = [d.task for d in decisions if d.changed]
        if self._announced and (not changed or signature == self._repeating):
            if not changed:
                self._repeating = None
            return
        data = {
            "changed": changed,
            "dry_run": dry_run,
            "forecast": {
                "jobs": round(ahead.jobs, 1),
                "peak_rate": round(ahead.peak_rate, 3),
                "assignments": ahead.assignments,
            },
            "pools": [decision.as_dict() for decision in decisions],
        }
        try:
            async with unit_of_work(self.sessions, self.redis) as work:
                await work.emit(keys.FLEET_TOPIC, "autoscaler.decision", data, actor="autoscaler")
            self._announced = True
            self._repeating = signature if changed else None
        except Exception:
            log.exception("decision not published")

    async def run(
        self, elector: Elector | None, once: bool = False, dry_run: bool = False, stop: asyncio.Event | None = None
    ) -> None:
        stop = stop or asyncio.Event()
        self.elector = elector
        interval = self.settings.autoscaler.interval_seconds
        self.check_queue_read_limit()
        while not stop.is_set():
            started = self.clock()
            tick = asyncio.ensure_future(self._tick(elector, dry_run))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({tick, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not tick.done():
                # Stopping (SIGTERM) does not wait for a slow cycle: the Lease is released at once.
                tick.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await tick
                break
            if once:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, interval - (self.clock() - started)))

    async def _tick(self, elector: Elector | None, dry_run: bool) -> None:
        try:
            leading = elector is None or await elector.acquire()
            self.metrics.leader.set(1 if leading else 0)
            if leading:
                await self.cycle(dry_run)
            else:
                self.metrics.cycle_done()  # a healthy standby
                log.debug("standing by; another autoscaler leads")
        except Exception:
            log.exception("autoscaler cycle failed")


def make_target(settings: Settings) -> tuple[ScaleTarget, Elector | None, object | None]:
    section = settings.autoscaler
    identity = section.identity or default_identity()
    if section.backend == "kubernetes":
        api_client = kubernetes_api_client()
        timeout = section.kubernetes_timeout_seconds
        target = KubernetesTarget(
            api_client, section.namespace, section.deployment_prefix, timeout=timeout, field_manager=identity
        )
        elector = LeaseElector(
            api_client,
            section.namespace,
            section.lease_name,
            identity,
            section.lease_duration_seconds,
            timeout=timeout,
        )
        return target, elector, api_client
    # Unset, each worker waits for its own longest job: allow for the longest step time limit.
    wait = settings.worker.job_completion_wait_seconds
    if wait is None:
        longest = max(policy.timeout_seconds for policy in vars(settings.retries).values())
        wait = longest + settings.worker.job_timeout_margin_seconds
    stop_timeout = wait + 10
    return LocalTarget(stop_timeout=stop_timeout), None, None


async def run_autoscaler(settings: Settings, once: bool, dry_run: bool) -> None:
    from core.db import make_engine, make_sessionmaker

    redis: Redis = Redis.from_url(settings.redis_url)
    engine = make_engine(settings.database_url)
    target, elector, _api_client = make_target(settings)
    if elector is None:
        elector = RedisLockElector(
            redis, settings.autoscaler.identity or default_identity(), settings.autoscaler.lease_duration_seconds
        )
    metrics = AutoscalerMetrics()
    scaler = Autoscaler(settings, redis, make_sessionmaker(engine), target, metrics)
    server = None
    if settings.autoscaler.http_port and not once:
        server = await serve_http(
            metrics, settings.autoscaler.http_port, max_age=settings.autoscaler.interval_seconds * 6 + 30
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await scaler.run(elector, once=once, dry_run=dry_run, stop=stop)
    finally:
        if server is not None:
            server.close()
        if not once:
            await target.close()  # local: drain the workers it started
            await elector.release()
        await engine.dispose()
        await redis.aclose()


def main(once: bool = False, dry_run: bool = False) -> None:
    from core.logs import configure_logging
    from core.settings import get_settings

    configure_logging()
    asyncio.run(run_autoscaler(get_settings(), once=once, dry_run=dry_run))
