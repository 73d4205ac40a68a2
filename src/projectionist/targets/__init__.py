"""Read-model stores other than SQL databases: projection targets with their own checkpoints.

A target implements the ``ReadModelStore`` contract (readmodel.py), so the engine's runner,
rebuilds and status work on it unchanged; a projection picks its target with its
``read_models`` attribute (see ``targets.redis.RedisProjection``).
"""
