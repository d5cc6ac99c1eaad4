"""``python -m autoprune.cli``: the command as installed (the local workers start it this way)."""

from autoprune.cli.app import entry

entry()
