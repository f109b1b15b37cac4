"""Datasets: the Parquet shard format shared by every workflow, manifests, loaders, patch extraction."""
