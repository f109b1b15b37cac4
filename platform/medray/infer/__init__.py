"""Whole-slide scoring: tissue-masked batched inference into probability heatmaps, overlays and reports.

``score_config`` (ScoreConfig), ``score_plan`` (pure grid/work-unit logic), ``predictor`` (model
in a Ray Data actor), ``heatmap`` (pure map math and evaluation), ``overlay`` (PNG), ``heatmap_tiff``
(georeferenced pyramidal TIFF) and ``score`` (the job: ``score_slides``, ``score_region``).
"""
