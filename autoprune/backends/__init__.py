"""Search backends: they ask for parameters, call :func:`autoprune.trial.run_trial`, and tell the results."""
