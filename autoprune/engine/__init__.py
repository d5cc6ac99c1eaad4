"""The engine wing (the search itself): the search space, allocations on cost targets, samplers, rungs and promotion, one trial
(:func:`autoprune.engine.trial.run_trial`, backend-agnostic), ask/tell shared by the backends, the trial record,
storage, warm starts, the sensitivity scan, and the backends (``backends/``: Optuna, local workers, Ray Tune).
Depends on config and every wing below it.
"""
