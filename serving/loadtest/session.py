"""One load test from settings to report: connect, describe the model, run, read the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from serving.loadtest.calls import Metadata, StreamCaller, UnaryCaller
from serving.loadtest.check import CheckResult, check_responses
from serving.loadtest.errors import TargetError
from serving.loadtest.inputs import ModelSignature, fetch_signature, load_rows
from serving.loadtest.payloads import build_payloads
from serving.loadtest.report import LoadReport, build_report
from serving.loadtest.runner import RunOutcome, Tick, run_load
from serving.loadtest.server_metrics import (
    MetricsUnavailable,
    ServerDelta,
    ServerSnapshot,
    difference,
    scrape,
)
from serving.loadtest.settings import ConnectionSettings, LoadTestSettings

LOGGER = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class LoadTestResult:
    report: LoadReport
    outcome: RunOutcome
    signature: ModelSignature


def open_channel(connection: ConnectionSettings) -> grpc.aio.Channel:
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if connection.connections > 1:
        # Channels with equal arguments share one connection unless each has its own pool.
        options.append(("grpc.use_local_subchannel_pool", 1))
    if connection.tls_ca is None:
        return grpc.aio.insecure_channel(connection.target, options=options)
    if connection.tls_server_name is not None:
        options.append(("grpc.ssl_target_name_override", connection.tls_server_name))
    credentials = grpc.ssl_channel_credentials(root_certificates=connection.tls_ca.read_bytes())
    return grpc.aio.secure_channel(connection.target, credentials, options=options)


def call_metadata(connection: ConnectionSettings) -> Metadata:
    return (("authorization", f"Bearer {connection.token}"),) if connection.token else ()


async def run_loadtest(
    settings: LoadTestSettings, on_tick: Callable[[Tick], None] | None = None
) -> LoadTestResult:
    """Run the whole test; raises TargetError when the server or the model is not there."""
    connection, workload, plan = settings.connection, settings.workload, settings.plan
    metadata = call_metadata(connection)
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(open_channel(connection))
            for _ in range(connection.connections)
        ]
        channel = channels[0]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(c.channel_ready() for c in channels)),
                timeout=connection.connect_timeout_seconds,
            )
        except TimeoutError:
            seconds = connection.connect_timeout_seconds
            raise TargetError(
                f"cannot connect to {connection.target} within {seconds:g} s"
            ) from None
        signature = await fetch_signature(
            channel, workload.model, workload.version, metadata, connection.connect_timeout_seconds
        )
        if signature.max_batch_size and workload.rows > signature.max_batch_size:
            LOGGER.warning(
                "--rows %d is above the model's max_batch_size %d: expect INVALID_ARGUMENT",
                workload.rows,
                signature.max_batch_size,
            )
        rows = load_rows(
            workload.input_source,
            signature,
            workload.seed,
            workload.data_dir,
            workload.pool_size * workload.rows,
        )
        batches = list(rows.reshape(workload.pool_size, workload.rows, *signature.sample_shape))
        payloads = build_payloads(
            workload.api, signature, batches, workload.version, workload.top_k
        )
        if workload.api == "stream":
            caller: StreamCaller | UnaryCaller = StreamCaller(
                channels,
                payloads,
                metadata,
                plan.timeout_seconds,
                plan.streams,
                plan.hard_bound_seconds + 5.0,
            )
        else:
            caller = UnaryCaller(channels, workload.api, payloads, metadata, plan.timeout_seconds)

        before: list[ServerSnapshot] = []
        notes: list[str] = []

        async def read_before() -> None:
            if settings.metrics_url is None:
                return
            try:
                before.append(await asyncio.to_thread(scrape, settings.metrics_url, workload.model))
            except MetricsUnavailable as error:
                notes.append(f"skipped, {error}")

        try:
            outcome = await run_load(
                caller,
                plan,
                workload.pool_size,
                check_samples=settings.check_samples,
                keep_timeline=settings.plot_path is not None,
                on_tick=on_tick,
                on_measure_start=read_before,
            )
        finally:
            await caller.close()

    server, server_note = await _server_figures(settings, before, notes)
    check: CheckResult | None = None
    if settings.check_samples and settings.model_repository is not None:
        check = await asyncio.to_thread(
            check_responses,
            outcome.samples,
            batches,
            workload.api,
            settings.model_repository,
            workload.model,
            signature.input_name,
        )
    report = build_report(settings, outcome, server, server_note, check)
    return LoadTestResult(report=report, outcome=outcome, signature=signature)


async def _server_figures(
    settings: LoadTestSettings, before: list[ServerSnapshot], notes: list[str]
) -> tuple[ServerDelta | None, str]:
    if settings.metrics_url is None:
        return None, "not read (--no-server-metrics)"
    if not before:
        return None, notes[0] if notes else "skipped, no reading before the run"
    try:
        after = await asyncio.to_thread(scrape, settings.metrics_url, settings.workload.model)
    except MetricsUnavailable as error:
        return None, f"skipped, {error}"
    return difference(before[0], after), ""
