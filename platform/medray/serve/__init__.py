"""Ray Serve inference application: typed builders, FastAPI ingress, one module per endpoint."""
