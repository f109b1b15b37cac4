"""The one on-disk dataset format every workflow writes and the trainer reads.

A dataset is a folder (local or ``s3://``) of Parquet shards plus a ``dataset.json`` written
last (atomically) that lists the complete shards; readers trust only that list, so a shard
from a crashed run is never read. Each row is one training example:

=============  ==========  ==========================================================
column         type        meaning
=============  ==========  ==========================================================
image          binary      encoded example: JPEG/PNG bytes (2D) or ``.npy`` bytes
                           (float32 volumes, ``C×D×H×W``, or any non-8-bit array)
encoding       string      "jpeg", "png" or "npy"
label          int64       class index into ``dataset.json``'s ``classes``
label_name     string      the class name
group          string      what must not straddle splits: slide, patient or lesion id
source         string      where the example came from (slide URI, file URI)
=============  ==========  ==========================================================

Workflow-specific columns may follow (slide patches add ``slide_id, x, y, level, mpp, size,
config_hash``; mitosis patches add ``image_id``; CT adds ``spacing``).
"""

from __future__ import annotations

import pyarrow as pa

IMAGE = "image"
ENCODING = "encoding"
LABEL = "label"
LABEL_NAME = "label_name"
GROUP = "group"
SOURCE = "source"
METADATA_FILE = "dataset.json"
SCHEMA_VERSION = 1

BASE_FIELDS = [
    pa.field(IMAGE, pa.binary()),
    pa.field(ENCODING, pa.string()),
    pa.field(LABEL, pa.int64()),
    pa.field(LABEL_NAME, pa.string()),
    pa.field(GROUP, pa.string()),
    pa.field(SOURCE, pa.string()),
]

PATCH_FIELDS = BASE_FIELDS + [
    pa.field("slide_id", pa.string()),
    pa.field("x", pa.int64()),          # level-0 top-left corner of the patch
    pa.field("y", pa.int64()),
    pa.field("level", pa.int64()),
    pa.field("mpp", pa.float64()),      # µm/px of the patch pixels (NaN when the slide has none)
    pa.field("size", pa.int64()),       # patch side in pixels at ``level``
    pa.field("config_hash", pa.string()),
]

BASE_SCHEMA = pa.schema(BASE_FIELDS)
PATCH_SCHEMA = pa.schema(PATCH_FIELDS)
