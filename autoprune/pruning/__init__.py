"""The pruning wing: torch-pruning glue (groups, plans, replay), importance scorers, depth pruning, the
prunability probe, the per-group MACs and latency models, and saving pruned models. Depends on metrics and below.
"""
