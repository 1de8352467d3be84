"""The defaults of every setting a user may change, in one place.

Each is named where it is used (``Rstick(...)``, ``@app.workflow(...)``,
``Worker(...)``, ``rstick worker``) and documented in the README's configuration
table; nothing else in rstick (neither the scripts nor the worker) makes one up.
"""

from __future__ import annotations

REDIS_URL = "redis://localhost:6379/0"
NAMESPACE = "rstick"
HEARTBEAT = 2.0  # seconds between a worker's heartbeats
WORKER_TTL = 10.0  # seconds without one after which a worker is dead
# Heartbeats in which no beat nor reaper pass landed anywhere that mean Redis stood
# still (paused, busy): nobody is judged on it (note_activity in lib.lua).
STANDSTILL_BEATS = 2
RETENTION = 86400.0  # seconds a finished run stays readable
MAX_DELIVERIES = 5  # a step that lost its worker this often is dead-lettered
DEAD_MAXLEN = 10_000  # dead letters kept; older ones are trimmed
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024  # an input or output, packed
POOL_SIZE = 10  # connections per pool: the sync side's, and each event loop's
POOL_TIMEOUT = 20.0  # seconds a command waits for a free connection
SCHEDULE_TIMEOUT = 300.0  # seconds a HARD run waits for its worker, or a run for its code
QUEUE = "default"
RETRIES = 0
BACKOFF = 1.0  # seconds before a step's first retry; it doubles with each
CONCURRENCY = 10  # steps a worker runs at once
DRAIN_TIMEOUT = 30.0  # seconds a stopping worker lets its running steps finish
BLOCK = 1.0  # seconds an idle worker's read blocks before it looks around again
