"""Which Serve replica this is, and whether a named one still lives: job records name their owner
with it, and the ingress names itself in ``GET /<endpoint>/batching``."""

from __future__ import annotations

SERVE_NAMESPACE = "serve"  # the Ray namespace Serve creates its replica actors in


def current_replica() -> str | None:
    """This Serve replica's actor name (what ``replica_alive`` looks up), or None outside Serve."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_replica_context().replica_id.to_full_id_str()
    except RayServeException:  # not inside a replica
        return None


def replica_alive(name: str | None) -> bool:
    """Whether the named replica actor still exists on this cluster (dead actors lose their name)."""
    import ray

    if not name:
        return False
    try:
        ray.get_actor(name, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True
