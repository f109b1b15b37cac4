"""Models: the name → network registry, weight loading with key checks, preprocessing, bundles."""
