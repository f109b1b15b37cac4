"""Two-stage mitosis detection (TUPAC16-style): proposals, patch classifier, clustering, matching."""
