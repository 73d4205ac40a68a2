"""``run`` (a worker), ``health`` (is one alive) and ``dashboard`` (watch them)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Annotated

import typer

from ..app import Application
from ..units import WorkerTimings
from .base import (
    AppOption,
    AppUrlOption,
    CreateSchemaOption,
    OptionalAppOption,
    PositionalApp,
    app,
    application_path,
    checked,
    console,
    errors,
    load_application,
    on_app,
    require_schema,
    run_async,
)

WorkerIdOption = Annotated[
    str | None,
    typer.Option(envvar="PROJECTIONIST_WORKER_ID", help="[default: host:pid:random]"),
]
LeaseSecondsOption = Annotated[
    float,
    typer.Option(
        min=1.0,
        envvar="PROJECTIONIST_LEASE_SECONDS",
        help="How long a dead worker's projections wait before others take them over",
    ),
]
ShutdownSecondsOption = Annotated[
    float,
    typer.Option(
        min=0.1,
        envvar="PROJECTIONIST_SHUTDOWN_SECONDS",
        help="On SIGTERM/SIGINT, how long the current batches may take to commit",
    ),
]
IdleTransactionOption = Annotated[
    float | None,
    typer.Option(
        min=0.1,
        envvar="PROJECTIONIST_IDLE_TRANSACTION_SECONDS",
        help="PostgreSQL ends a batch left idle this long (a paused worker) "
        "[default: --lease-seconds]",
    ),
]


@app.command("run")
def run_command(
    context: typer.Context,
    positional: PositionalApp = None,
    application: OptionalAppOption = None,
    url: AppUrlOption = None,
    worker_id: WorkerIdOption = None,
    lease_seconds: LeaseSecondsOption = 10.0,
    shutdown_seconds: ShutdownSecondsOption = 30.0,
    idle_transaction_seconds: IdleTransactionOption = None,
    create_schema: CreateSchemaOption = False,
) -> None:
    """Run the application's projections as a worker until SIGINT or SIGTERM.

    Any number of workers share the projections (and partitions) through leases in the
    database; on a signal the current batches commit, the leases are handed back, exit 0.
    It logs at INFO unless --log-level says otherwise: a daemon says when it starts (worker
    id, units, store) and stops."""
    # Checked before anything runs: an infinite lease would never expire after a crash.
    checked(
        lambda: WorkerTimings(
            lease_seconds, shutdown=shutdown_seconds, idle_transaction=idle_transaction_seconds
        )
    )
    _log_at_info_by_default(context)

    async def use(app: Application) -> None:
        await require_schema(app, create_schema)
        await app.setup()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, app.stop)
        await app.run(
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            shutdown_seconds=shutdown_seconds,
            idle_transaction_seconds=idle_transaction_seconds,
        )

    on_app(checked(lambda: application_path(application, positional)), url, use)


def _log_at_info_by_default(context: typer.Context) -> None:
    """``run`` is a daemon: at the default level (no --log-level, no environment variable)
    it logs at INFO, where the worker says it started and stopped."""
    source = context.find_root().get_parameter_source("log_level")
    # By name: typer may bring a click of its own, whose enum is another class.
    if source is not None and source.name == "DEFAULT":
        logging.getLogger("projectionist").setLevel(logging.INFO)


@app.command()
def health(
    application: AppOption,
    url: AppUrlOption = None,
    worker_id: Annotated[
        str | None,
        typer.Option(envvar="PROJECTIONIST_WORKER_ID", help="Check this worker [default: any]"),
    ] = None,
    max_age: Annotated[
        float,
        typer.Option(min=0.1, envvar="PROJECTIONIST_HEALTH_MAX_AGE", help="Seconds"),
    ] = 30.0,
) -> None:
    """Exit 0 if a worker (or the given one) has sent a heartbeat within MAX_AGE seconds."""

    async def use(app: Application) -> list[tuple[str, float]]:
        return await app.live_workers(max_age)

    alive = [
        (w, age) for w, age in on_app(application, url, use) if worker_id is None or w == worker_id
    ]
    if not alive:
        errors.print(
            f"unhealthy: no heartbeat from {worker_id or 'any worker'} in {max_age:g}s",
            markup=False,
        )
        raise typer.Exit(1)
    for worker, age in alive:
        console.print(f"healthy: {worker} (heartbeat {age:.1f}s ago)", markup=False)


# -- dashboard ----------------------------------------------------------------------------


@app.command("dashboard")
def dashboard_command(
    positional: PositionalApp = None,
    application: OptionalAppOption = None,
    url: AppUrlOption = None,
    host: Annotated[
        str, typer.Option(envvar="PROJECTIONIST_DASHBOARD_HOST", help="Address to listen on")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            min=0, max=65535, envvar="PROJECTIONIST_DASHBOARD_PORT", help="Port (0: any free one)"
        ),
    ] = 8000,
    interval: Annotated[
        float,
        typer.Option(
            min=0.05, envvar="PROJECTIONIST_DASHBOARD_INTERVAL", help="Seconds between status polls"
        ),
    ] = 1.0,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            envvar="PROJECTIONIST_DASHBOARD_ALLOWED_HOSTS",
            help="Comma-separated names the page may be requested by (the Host header; "
            "'*' for any) [default: the --host address; on 0.0.0.0 this machine's names "
            "and addresses]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve a live web dashboard of the projections, with /metrics for Prometheus."""
    from ..dashboard import Dashboard  # the web stack loads only for this command

    def ready(address: str) -> None:
        console.print(f"dashboard on {address}/  (metrics: {address}/metrics; Ctrl-C stops)")
        sys.stdout.flush()

    async def go() -> None:
        target = load_application(application_path(application, positional))
        await target.open(url)
        try:
            names = None if allowed_hosts is None else allowed_hosts.split(",")
            dashboard = Dashboard(target, interval=interval, allowed_hosts=names)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, dashboard.stop)
            await dashboard.serve_until_stopped(host, port, ready)
        finally:
            await target.close()

    run_async(go)
