"""Deterministic synthetic data with known ground truth: slides, HPFs, CT, dermoscopy.

Each generator module exposes ``Config`` (a ``MedrayModel``) and ``generate(config) -> dict``
(a summary naming every file written); ``medray synth <kind>`` dispatches to them.
"""

KINDS = {
    "slides": "medray.synth.slides",
    "hpf": "medray.synth.hpf",
    "ct": "medray.synth.ct",
    "skin": "medray.synth.skin",
}
