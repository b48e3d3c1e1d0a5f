"""The egress proxy: the only way out of a sandbox that has an allow-list. One listener per
such sandbox, on a Unix socket mounted into it; requests parsed with h11; names resolved
here and refused when they point inward; every connection capped, logged and counted."""
