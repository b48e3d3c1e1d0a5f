"""The egress allow-list a request asks for: `"network": {"allow": [...]}` in a JSON body, or
`allow_hosts=a,b` on /execute. Checked against the operator's list before anything starts."""

from __future__ import annotations

from sandbox.domain.egress import EgressPolicy
from sandbox.domain.errors import InvalidRequest
from sandbox.entrypoints.json_body import JsonFields


def allow_list_from_json(fields: JsonFields, operator: EgressPolicy) -> tuple[str, ...]:
    network = fields.fields("network", ("allow",))
    if network is None:
        return ()
    return checked_allow_list(network.texts("allow") or [], operator, "network.allow")


def allow_list_from_query(query: dict[str, str], operator: EgressPolicy) -> tuple[str, ...]:
    entries = [entry.strip() for entry in query.get("allow_hosts", "").split(",")]
    return checked_allow_list([entry for entry in entries if entry], operator, "allow_hosts")


def checked_allow_list(
    entries: list[str], operator: EgressPolicy, where: str
) -> tuple[str, ...]:
    """The entries in their canonical form, once each is well-formed and within what the
    operator allows (SANDBOX_EGRESS_ALLOW); InvalidRequest saying what is wrong."""
    if not entries:
        return ()
    try:
        requested = EgressPolicy.parse(entries)
    except ValueError as error:
        raise InvalidRequest(f"{where}: {error}") from None
    if not operator:
        raise InvalidRequest(
            f"{where}: this server allows no egress (its operator has not set "
            "SANDBOX_EGRESS_ALLOW)"
        )
    beyond = operator.uncovered(requested)
    if beyond:
        raise InvalidRequest(
            f"{where} asks for more than this server allows: {', '.join(beyond)[:300]} "
            f"(it allows {', '.join(operator.entries)[:500]})"
        )
    return requested.entries
