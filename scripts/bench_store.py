"""Benchmark: store latency, the embedded SQLite store against PostgreSQL, in the same run.

A benchmark, not a test: it prints a table and never fails on the figures. PostgreSQL is a
throwaway cluster of Debian's server on a Unix socket (`make bench-store` installs it), with
fsync on, as SQLite's synchronous=FULL is: both wait for the disk on every write.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import structlog
from pg_cluster import throwaway_cluster

from sandbox.adapters.postgres.database import PostgresDatabase
from sandbox.adapters.postgres.leases import PostgresLeaseStore
from sandbox.adapters.postgres.store import PostgresSandboxStore
from sandbox.adapters.sqlite_db import SqliteDatabase
from sandbox.adapters.sqlite_leases import SqliteLeaseStore
from sandbox.adapters.sqlite_store import SqliteSandboxStore
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.model import Sandbox, SandboxKind, SandboxState
from sandbox.domain.ports import LeaseStore, SandboxStore
from sandbox.settings import Settings

LISTED = 100
LEASE_S = 300.0
Operation = Callable[[int], Awaitable[object]]


def a_record(n: int) -> Sandbox:
    return Sandbox(sandbox_id=new_sandbox_id(), kind=SandboxKind.SESSION,
                   state=SandboxState.RUNNING, language=None, limits=Settings().default_limits(),
                   created_at=1_700_000_000.0 + n, updated_at=1_700_000_000.0 + n)


async def timed(operation: Operation, runs: int) -> list[float]:
    latencies = []
    for n in range(runs):
        started = time.perf_counter()
        await operation(n)
        latencies.append(time.perf_counter() - started)
    return latencies


async def measure(store: SandboxStore, leases: LeaseStore, runs: int) -> dict[str, list[float]]:
    listed = [a_record(n) for n in range(LISTED)]
    for sandbox in listed:
        await store.add(sandbox)
    fresh = [a_record(LISTED + n) for n in range(runs)]
    lease = await leases.acquire(listed[0].sandbox_id, "bench", LEASE_S)
    assert lease is not None

    async def save(n: int) -> None:
        await store.save(dataclasses.replace(listed[n % LISTED], reason=str(n)))

    async def fenced_save(n: int) -> None:
        await store.save(dataclasses.replace(listed[0], reason=str(n)), fence=lease)

    async def acquire_release(n: int) -> None:
        got = await leases.acquire(listed[1].sandbox_id, "bench", LEASE_S)
        assert got is not None
        await leases.release(got)

    return {
        "add (insert a record)": await timed(lambda n: store.add(fresh[n]), runs),
        "save (update a record)": await timed(save, runs),
        "save fenced by a lease": await timed(fenced_save, runs),
        "get one record": await timed(lambda n: store.get(listed[n % LISTED].sandbox_id), runs),
        f"list {LISTED} records": await timed(lambda n: store.list(), runs),
        "acquire + release a lease": await timed(acquire_release, runs),
    }


@contextlib.asynccontextmanager
async def sqlite_backend() -> AsyncIterator[tuple[SandboxStore, LeaseStore]]:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
        database = SqliteDatabase(Path(folder) / "sandboxes.db")
        try:
            yield SqliteSandboxStore(database), SqliteLeaseStore(database)
        finally:
            database.close()


@contextlib.asynccontextmanager
async def postgres_backend(url: str) -> AsyncIterator[tuple[SandboxStore, LeaseStore]]:
    database = PostgresDatabase(url)
    await database.start()
    try:
        yield PostgresSandboxStore(database), PostgresLeaseStore(database)
    finally:
        await database.close()


def ms(latencies: list[float], fraction: float) -> float:
    ordered = sorted(latencies)
    return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(sqlite: dict[str, list[float]], postgres: dict[str, list[float]], runs: int) -> None:
    print(f"\nstore latency, {runs} runs each (ms; PostgreSQL on a Unix socket, fsync on)\n")
    print(f"{'operation':28} {'SQLite p50':>10} {'p95':>7} {'PostgreSQL p50':>15} "
          f"{'p95':>7} {'ratio p50':>9}")
    for name, lite in sqlite.items():
        pg = postgres[name]
        ratio = statistics.median(pg) / statistics.median(lite)
        print(f"{name:28} {ms(lite, 0.5):10.3f} {ms(lite, 0.95):7.3f} {ms(pg, 0.5):15.3f} "
              f"{ms(pg, 0.95):7.3f} {ratio:9.2f}")


async def run(runs: int) -> None:
    async with sqlite_backend() as (store, leases):
        sqlite = await measure(store, leases, runs)
    with throwaway_cluster(durable=True) as cluster:
        async with postgres_backend(cluster.url()) as (store, leases):
            postgres = await measure(store, leases, runs)
    report(sqlite, postgres, runs)


def main() -> int:
    parser = argparse.ArgumentParser(description="Store latency: SQLite against PostgreSQL.")
    parser.add_argument("--runs", type=int, default=200, help="calls per operation")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(run(max(args.runs, 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
