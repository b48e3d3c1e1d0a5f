"""One connection from a sandbox, from its request to its end. Refusals and cuts are raised
as `Refused` and `Cut`; the proxy answers, logs and counts them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import h11

from sandbox.adapters.egress.allowance import Allowance, EgressLimits
from sandbox.adapters.egress.outcome import Cut, Refused, Report
from sandbox.adapters.egress.requests import (
    MAX_HEAD,
    Incoming,
    Target,
    forwarded_headers,
    target_of,
)
from sandbox.adapters.egress.resolver import Resolver
from sandbox.adapters.egress.streams import CHUNK, Activity, Meter, pump, until_done
from sandbox.domain.egress import EgressPolicy, IPAddress

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
# Addresses of one name tried in turn before giving up.
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Context:
    policy: EgressPolicy
    resolver: Resolver
    limits: EgressLimits
    allowance: Allowance
    operator: EgressPolicy | None = None


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: Context,
    report: Report,
) -> None:
    activity = Activity(context.limits.idle_timeout_s)
    incoming = Incoming(reader, activity)
    request = await incoming.request()
    target = target_of(request)
    report.host, report.port = target.host, target.port
    context.resolver.screen(target.host)
    _check_policy(context, target)
    addresses = await context.resolver.addresses(target.host, target.port)
    up_reader, up_writer, address = await _connect(addresses, target, context.limits)
    report.address = str(address)
    meter = Meter(report, context.allowance)
    try:
        if target.tunnel:
            await _tunnel(incoming, reader, writer, up_reader, up_writer, meter, activity)
        else:
            await _forward(incoming, request, target, writer, up_reader, up_writer, meter,
                           activity)
    finally:
        up_writer.close()


def _check_policy(context: Context, target: Target) -> None:
    host, port = target.host, target.port
    if not context.policy.allows(host, port):
        raise Refused("refused_policy", f"{host}:{port} is not in this sandbox's allow-list "
                      f"({', '.join(context.policy.entries)[:300]})")
    if context.operator is not None and not context.operator.allows(host, port):
        raise Refused("refused_policy", f"{host}:{port} is no longer in this server's "
                      "allow-list (SANDBOX_EGRESS_ALLOW)")


async def _connect(
    addresses: list[IPAddress], target: Target, limits: EgressLimits
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, IPAddress]:
    why, status = "no address", 502
    for address in addresses[:MAX_ATTEMPTS]:
        try:
            async with asyncio.timeout(limits.connect_timeout_s):
                up_reader, up_writer = await asyncio.open_connection(
                    str(address), target.port, limit=2 * CHUNK)
        except TimeoutError:
            why, status = f"{address} did not answer in {limits.connect_timeout_s:g} s", 504
        except OSError as error:
            why, status = f"{address}: {error.strerror or error}", 502
        else:
            return up_reader, up_writer, address
    raise Refused("failed_upstream", f"cannot connect to {target.host}:{target.port}: {why}",
                  status)


async def _tunnel(
    incoming: Incoming, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter, meter: Meter,
    activity: Activity,
) -> None:
    early = await incoming.tunnel_start()
    writer.write(ESTABLISHED)
    if early:
        meter.sent(len(early))
        up_writer.write(early)
    await until_done(pump(reader, up_writer, meter.sent, activity),
                     pump(up_reader, writer, meter.received, activity))


async def _forward(
    incoming: Incoming, request: h11.Request, target: Target, writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter, meter: Meter,
    activity: Activity,
) -> None:
    """One plain-HTTP request: its head and body re-framed by h11 for the upstream server,
    and the answer re-framed back; the exchange ends with the answer."""
    upstream = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    head = upstream.send(h11.Request(method=request.method, target=target.path,
                                     headers=forwarded_headers(request, target)))
    assert head is not None
    meter.sent(len(head))
    up_writer.write(head)
    await until_done(_body(incoming, upstream, up_writer, meter),
                     _answer(upstream, up_reader, incoming.conn, writer, meter, activity),
                     first_ends_all=True)


async def _body(
    incoming: Incoming, upstream: h11.Connection, up_writer: asyncio.StreamWriter, meter: Meter
) -> None:
    while True:
        event = await incoming.next_event()
        if isinstance(event, h11.Data):
            data = upstream.send(h11.Data(data=event.data))
        elif isinstance(event, h11.EndOfMessage):
            data = upstream.send(h11.EndOfMessage())
        else:
            raise Refused("bad_request", "the request ended before its body")
        assert data is not None
        meter.sent(len(data))
        up_writer.write(data)
        await up_writer.drain()
        if isinstance(event, h11.EndOfMessage):
            await asyncio.Event().wait()  # the answer's end ends the exchange


async def _answer(
    upstream: h11.Connection, up_reader: asyncio.StreamReader, downstream: h11.Connection,
    writer: asyncio.StreamWriter, meter: Meter, activity: Activity,
) -> None:
    """Pass the server's answer on as h11 reads it (interim answers too), saying the
    connection closes after it: one request per connection, whatever the server keeps."""
    passed = False
    while True:
        try:
            event = upstream.next_event()
            if event is h11.NEED_DATA:
                upstream.receive_data(await activity.read(up_reader))
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("it closed before its answer ended")
            data = downstream.send(_passed_on(event))
        except h11.ProtocolError as error:
            why = f"the server's answer is not HTTP: {error}"
            raise Cut("cut_upstream", why) if passed else Refused("failed_upstream", why) \
                from None
        passed = True
        if data:
            meter.received(len(data))
            writer.write(data)
            await writer.drain()
        if isinstance(event, h11.EndOfMessage):
            return


def _passed_on(event: object) -> h11.Event:
    if isinstance(event, h11.InformationalResponse | h11.Response):
        headers = [(name, value) for name, value in event.headers
                   if name not in (b"connection", b"keep-alive", b"proxy-connection")]
        if isinstance(event, h11.Response):
            return h11.Response(status_code=event.status_code, reason=event.reason,
                                headers=[*headers, (b"connection", b"close")])
        return h11.InformationalResponse(status_code=event.status_code, reason=event.reason,
                                         headers=headers)
    if isinstance(event, h11.Data):
        return h11.Data(data=event.data)
    return h11.EndOfMessage()  # trailers are dropped: the framing towards the client may differ
