"""Heatmap job records in storage: ``<output_root>/<job_id>/job.json``, one small JSON per job.

The replica that owns a job (the one whose thread pool runs it) writes the record atomically
(``medray.storage``: temporary key, then move) when the job is queued, when it starts, as progress
lands (at most every ``record_interval_s``) and when it ends. So any replica, or the same
deployment after a Serve redeploy or restart, can answer ``GET /slides/heatmap/{id}`` from it.

A record names its owner (the Serve replica actor, ``medray.serve.replicas.current_replica``). A record that still says ``queued`` or
``running`` while that actor is gone can never finish: ``settle`` reports it as ``interrupted``
with a reason instead of leaving it "running" forever. The stored record itself is left as the
owner last wrote it.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable

from medray.config.common import StorageOptions
from medray.errors import StorageError
from medray.runtime import json_safe

RECORD_FILE = "job.json"
ACTIVE = ("queued", "running")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex: anything else cannot name a record


def record_uri(output_root: str, job_id: str) -> str:
    """Where a job's record lives: beside its outputs, ``<output_root>/<job_id>/job.json``."""
    from medray.storage import join_uri

    return join_uri(output_root, job_id, RECORD_FILE)


def write_record(job: dict[str, Any], output_root: str, storage: StorageOptions | None = None) -> None:
    """Store one job's state atomically (readers see the previous record or this one, never half)."""
    from medray.storage import atomic_write_text

    record = json_safe({**job, "updated_at": time.time()})
    atomic_write_text(record_uri(output_root, job["job_id"]), json.dumps(record, indent=1), storage)


def read_record(output_root: str, job_id: str, storage: StorageOptions | None = None) -> dict[str, Any] | None:
    """The stored record of ``job_id``, or None when the id is malformed or has no record."""
    from medray.storage import exists, read_text

    if not JOB_ID.match(job_id):
        return None
    uri = record_uri(output_root, job_id)
    if not exists(uri, storage):
        return None
    try:
        return json.loads(read_text(uri, storage))
    except json.JSONDecodeError as err:  # written atomically, so only someone else's file gets here
        raise StorageError(f"heatmap job record {uri!r} is not valid JSON: {err}") from None


def settle(record: dict[str, Any], owner_alive: Callable[[str | None], bool]) -> dict[str, Any]:
    """The job as a reader should see it: a queued/running record whose owner is gone becomes
    ``interrupted`` (with a ``reason``); anything else is returned unchanged."""
    if record.get("status") not in ACTIVE or owner_alive(record.get("owner")):
        return record
    updated = record.get("updated_at")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(updated)) if updated else "an unknown time"
    reason = (f"the Serve replica that ran this job ({record.get('owner') or 'unknown'}) is gone (redeploy, "
              f"restart or crash) while the job was {record['status']}; last progress "
              f"{record.get('done', 0)}/{record.get('total', 0)} patches at {when}. Submit the slide again.")
    return {**record, "status": "interrupted", "reason": reason}
