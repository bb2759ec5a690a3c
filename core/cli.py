"""The ``handin`` command: one entry point for every process kind."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence


def _api(args: argparse.Namespace) -> None:
    import uvicorn

    from core.logs import configure_logging
    from core.settings import get_settings

    configure_logging()
    uvicorn.run(
        "api.main:create_served_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        timeout_keep_alive=get_settings().http_keep_alive_seconds,
    )


def _worker(args: argparse.Namespace) -> None:
    from workers.run import run_worker

    run_worker(args.task, burst=args.burst)


def _router(args: argparse.Namespace) -> None:
    from router.server import main as router_main

    router_main(host=args.host, port=args.port, health_port=args.health_port)


def _autoscaler(args: argparse.Namespace) -> None:
    from autoscaler.main import main as autoscaler_main

    autoscaler_main(once=args.once, dry_run=args.dry_run)


def _migrate(_args: argparse.Namespace) -> None:
    from core.migrate import upgrade

    upgrade()


def _seed_demo(_args: argparse.Namespace) -> None:
    from core.demo import seed_demo

    asyncio.run(seed_demo(print_credentials=True))


def _reconcile(_args: argparse.Namespace) -> None:
    from workers.reconcile import reconcile_once

    report = asyncio.run(reconcile_once())
    print(report.summary())
    for item in report.requeued:
        print(f"  requeued {item.step} of submission {item.submission_id}: {item.reason}")


def _verify_receipt(args: argparse.Namespace) -> None:
    from core.receipts import verify_receipt_command

    sys.exit(verify_receipt_command(args.receipt, args.file, args.keys))


def _dev(args: argparse.Namespace) -> None:
    from core.devserver import run_dev

    sys.exit(run_dev(port=args.port, router_port=args.router_port))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handin", description="Asynchronous assignment submission.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(handler=handler)
        return sub

    api = command("api", _api, "serve the web pages and JSON API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1, help="server processes (one per core is typical)")

    worker = command("worker", _worker, "run the worker for one pipeline task")
    worker.add_argument("task")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")

    router = command("router", _router, "run the WAMP WebSocket router")
    router.add_argument("--host", default="127.0.0.1")
    router.add_argument("--port", type=int, default=8080)
    router.add_argument(
        "--health-port", type=int, default=None, help="also answer /healthz and /metrics here, never queued"
    )

    scaler = command("autoscaler", _autoscaler, "scale the worker pools")
    scaler.add_argument("--once", action="store_true", help="decide and apply once, then exit")
    scaler.add_argument("--dry-run", action="store_true", help="decide and log, change nothing")

    command("migrate", _migrate, "bring the database schema up to date")
    command("seed-demo", _seed_demo, "create the demo course, assignment and users")
    command("reconcile", _reconcile, "re-enqueue steps whose job vanished or overran")

    check = command("verify-receipt", _verify_receipt, "check a signed receipt (and its file) with the public keys")
    check.add_argument("receipt", help="the receipt, handin-receipt-<id>.json")
    check.add_argument("file", nargs="?", help="the submitted file: its SHA-256 must be the receipt's")
    check.add_argument("--keys", help="the public keys: a saved keys JSON (offline) or its URL; default: this server's")

    dev = command("dev", _dev, "run everything on this machine (what `make run` does)")
    dev.add_argument("--port", type=int, default=8000, help="the api's port")
    dev.add_argument("--router-port", type=int, default=8080, help="the WAMP router's port")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main(sys.argv[1:])
