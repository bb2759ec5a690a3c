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
from autoscaler.targets import KubernetesTarget, LocalTarget, ScaleTarget, kubernetes_api_client
from core import keys
from core.events import EventBatch
from core.pipeline import STEPS_BY_NAME
from core.settings import Settings

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
    return ArrivalCurve(section.final_day_share, section.final_hour_share, section.surge_seconds)


class Autoscaler:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        sessions: async_sessionmaker[AsyncSession] | None,
        target: ScaleTarget,
        metrics: AutoscalerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        tasks: Sequence[str] = keys.TASKS,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sessions = sessions
        self.target = target
        self.metrics = metrics or AutoscalerMetrics()
        self.clock = clock
        self.tasks = tuple(tasks)
        section = settings.autoscaler
        self.queues = QueueSource(redis, self.tasks)
        self.meters = {
            task: RateMeter(
                section.default_drain_rate_cpu
                if STEPS_BY_NAME[task].profile == "cpu"
                else section.default_drain_rate_io,
                section.pool(task).drain_rate_per_replica,
            )
            for task in self.tasks
        }
        self.history: dict[str, tuple[Recommendation, ...]] = {task: () for task in self.tasks}

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
        except Exception:
            log.exception("forecast unavailable; deciding from the queues alone")
            return NO_FORECAST
        return forecast(loads, now, section.lead, arrival_curve(self.settings))

    async def cycle(self, dry_run: bool = False) -> list[Decision]:
        now = self.clock()
        lead = self.settings.autoscaler.lead
        depths = await self.queues.read(now, lead)
        ahead = await self.read_forecast(now)
        decisions: list[Decision] = []
        for task in self.tasks:
            # One pool failing (e.g. its Deployment missing) must not stop the others.
            try:
                decisions.append(await self._pool_cycle(task, now, depths, ahead, dry_run))
            except Exception:
                self.metrics.errors.labels(task).inc()
                log.exception("pool cycle failed", extra={"pool": task})
        await self._publish(decisions, ahead, dry_run)
        self.metrics.cycle_done()
        return decisions

    async def _pool_cycle(
        self, task: str, now: float, depths: dict[str, QueueDepth], ahead: Forecast, dry_run: bool
    ) -> Decision:
        depth = depths[task]
        current = await self.target.current(task)
        meter = self.meters[task]
        meter.observe(CounterSample(now, depth.completed, depth.queued, depth.ready), current)
        inputs = PoolInputs(
            task=task,
            ready=depth.ready,
            running=depth.running,
            deferred=depth.deferred,
            due_soon=depth.due_soon,
            current_replicas=current,
            drain_rate=meter.drain_rate,
            arrival_rate=meter.arrival_rate,
            upstream=sum(depths[s].ready + depths[s].running for s in upstream_steps(task) if s in depths),
            forecast_jobs=ahead.jobs,
            forecast_peak_rate=ahead.peak_rate,
        )
        decision = decide(inputs, pool_limits(self.settings, task), now, self.history[task])
        self.history[task] = decision.history
        if decision.changed and not dry_run:
            await self.target.apply(task, decision.desired)
        self.metrics.record(decision)
        log.info(
            "autoscaler decision",
            extra={"decision": decision.as_dict(), "dry_run": dry_run, "drain_measured": meter.measured},
        )
        return decision

    async def _publish(self, decisions: list[Decision], ahead: Forecast, dry_run: bool) -> None:
        """Each cycle's decisions go to the staff dashboard, through the audit trail."""
        if self.sessions is None or not decisions:
            return
        data = {
            "dry_run": dry_run,
            "forecast": {
                "jobs": round(ahead.jobs, 1),
                "peak_rate": round(ahead.peak_rate, 3),
                "assignments": ahead.assignments,
            },
            "pools": [decision.as_dict() for decision in decisions],
        }
        try:
            async with self.sessions() as session, session.begin():
                batch = EventBatch(session)
                await batch.emit(keys.STAFF_DASHBOARD_TOPIC, "autoscaler.decision", data, actor="autoscaler")
            await batch.publish(self.redis)
        except Exception:
            log.exception("decision not published")

    async def run(
        self, elector: Elector | None, once: bool = False, dry_run: bool = False, stop: asyncio.Event | None = None
    ) -> None:
        stop = stop or asyncio.Event()
        interval = self.settings.autoscaler.interval_seconds
        self.check_queue_read_limit()
        while not stop.is_set():
            started = self.clock()
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
            if once:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, interval - (self.clock() - started)))


def make_target(settings: Settings) -> tuple[ScaleTarget, Elector | None, object | None]:
    section = settings.autoscaler
    identity = section.identity or default_identity()
    if section.backend == "kubernetes":
        api_client = kubernetes_api_client()
        target = KubernetesTarget(api_client, section.namespace, section.deployment_prefix)
        elector = LeaseElector(
            api_client, section.namespace, section.lease_name, identity, section.lease_duration_seconds
        )
        return target, elector, api_client
    stop_timeout = settings.worker.job_completion_wait_seconds + 10
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
