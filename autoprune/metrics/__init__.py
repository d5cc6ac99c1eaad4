"""The metrics wing: what a model costs and how well it does: MACs, parameters, accuracy, paired latency on a
deployment runtime, the per-device lock that keeps latency quiet, McNemar's test. Depends on data, models and the
ground floor.
"""
