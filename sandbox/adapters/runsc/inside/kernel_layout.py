"""The frames of a code context's kernel (kernel.py), shared by the kernel and the service's
decoder (sandbox/adapters/runsc/kernel_frames.py), so that the two ends cannot drift apart.
Standard library only: the service imports it too.

Requests (service to kernel): `>I` length, then JSON. Frames (kernel to service): `>I` length
of the rest, then `>BQ` (kind, cell token), then the payload: raw bytes for STDOUT and STDERR,
JSON for READY, RESULT, ERROR and END.
"""

import struct

VERSION = 1
LENGTH = struct.Struct(">I")
HEAD = struct.Struct(">BQ")
READY, STDOUT, STDERR, RESULT, ERROR, END = range(1, 7)
# The MIME types a result may carry (the service's list: sandbox/domain/cells.py).
TEXT_TYPES = ("text/plain", "text/html", "text/markdown", "text/latex", "image/svg+xml")
BASE64_TYPES = ("image/png", "image/jpeg")
JSON_TYPE = "application/json"
