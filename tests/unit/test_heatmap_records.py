"""Heatmap job records without a Ray cluster: the JSON round trip (local folder and the loopback
S3 server), what ids can name a record, and when a stored "running" job is reported interrupted."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from medray.serve import heatmap_records as R
from medray.serve.heatmap_jobs import job_view
from medray.serve.replicas import current_replica, replica_alive


def _job(status: str = "running", owner: str | None = "SERVE_REPLICA::app#SlideHeatmaps#abc123") -> dict:
    return {"job_id": uuid.uuid4().hex, "status": status, "slide_uri": "/data/slides/tumor_001.tif",
            "slide_id": "tumor_001", "model_uri": "/models/patches", "model_version": "0123456789ab",
            "options": {"threshold": 0.4}, "submitted_at": 1_700_000_000.0, "started_at": 1_700_000_001.0,
            "finished_at": None, "done": 96, "total": 256, "outputs": None, "owner": owner}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_record_round_trip(where, tmp_path, request):
    from medray.storage import list_files

    if where == "s3":
        root, storage = f"{request.getfixturevalue('s3_bucket')}/serve/heatmaps", request.getfixturevalue("s3_options")
    else:
        root, storage = str(tmp_path / "heatmaps"), None
    job = _job()
    R.write_record(job, root, storage)
    assert R.read_record(root, job["job_id"], storage) | {"updated_at": 0} == job | {"updated_at": 0}
    # a later state replaces the record whole; numpy numbers and NaN come back as plain JSON
    job.update(status="succeeded", done=256, outputs={"overlay": f"{root}/x/overlay.png"},
               scores={"max": np.float32(0.75), "top_k_mean": float("nan")})
    R.write_record(job, root, storage)
    back = R.read_record(root, job["job_id"], storage)
    assert back["status"] == "succeeded" and back["done"] == 256 and back["outputs"] == job["outputs"]
    assert back["scores"] == {"max": 0.75, "top_k_mean": None} and back["updated_at"] > 1_700_000_000
    assert list_files(f"{root}/{job['job_id']}", storage) == [R.record_uri(root, job["job_id"])]  # no temporaries


def test_unknown_or_malformed_ids_have_no_record(tmp_path):
    root = str(tmp_path)
    job = _job()
    R.write_record(job, root)
    assert R.read_record(root, uuid.uuid4().hex) is None
    for bad in ("0123456789abcdef", "..", f"../{job['job_id']}", job["job_id"].upper(), ""):
        assert R.read_record(root, bad) is None
    assert R.record_uri(root, job["job_id"]) == f"{root}/{job['job_id']}/job.json"


def test_a_foreign_file_is_a_storage_error(tmp_path):
    from medray.errors import StorageError

    job_id = uuid.uuid4().hex
    (tmp_path / job_id).mkdir()
    (tmp_path / job_id / "job.json").write_text("{not json")
    with pytest.raises(StorageError, match="is not valid JSON"):
        R.read_record(str(tmp_path), job_id)


@pytest.mark.parametrize("status", ["queued", "running"])
def test_an_active_job_whose_owner_is_gone_is_interrupted(status):
    record = _job(status) | {"updated_at": 1_700_000_100.0}
    asked = []
    settled = R.settle(record, lambda owner: asked.append(owner) or False)
    assert asked == [record["owner"]]
    assert settled["status"] == "interrupted" and record["status"] == status  # the input is left alone
    assert record["owner"] in settled["reason"] and f"while the job was {status}" in settled["reason"]
    assert "96/256 patches at 2023-11-14T22:15:00Z" in settled["reason"]
    view = job_view(settled, "/slides/heatmap")
    assert view["status"] == "interrupted" and view["reason"] == settled["reason"]
    assert view["progress"] == {"done": 96, "total": 256, "fraction": 0.375} and "links" not in view


def test_live_owners_and_finished_jobs_are_reported_as_stored():
    running = _job("running")
    assert R.settle(running, lambda owner: True) is running  # another live replica still runs it
    for status in ("succeeded", "failed"):
        done = _job(status)
        assert R.settle(done, lambda owner: False) is done  # finished: nobody needs to be alive
    orphan = R.settle(_job("running", owner=None), replica_alive)  # no owner recorded: nobody can finish it
    assert orphan["status"] == "interrupted" and "(unknown)" in orphan["reason"]


def test_outside_a_replica_there_is_no_owner():
    assert current_replica() is None
