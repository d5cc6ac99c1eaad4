"""The search wing: the search space, allocations on cost targets, samplers, rungs and promotion, one trial
(:func:`autoprune.search.trial.run_trial`, backend-agnostic), ask/tell shared by the backends, the trial record,
storage, warm starts, the sensitivity scan, and the backends (``backends/``: Optuna, local workers, Ray Tune).
Depends on config and every wing below it.
"""
