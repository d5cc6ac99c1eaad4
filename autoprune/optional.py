"""Optional heavy dependencies (plotting, ONNX Runtime, Ray), imported where they are used.

A missing extra fails at the point of use with one line that says what needs it and how to install it, in the
spirit of Optuna's ``try_import``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from autoprune.errors import AutopruneError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise an AutopruneError naming the ``autoprune[extra]`` that installs it.

    Args:
        module: the dotted module name, e.g. ``"plotly.io"``.
        extra: the optional-dependency group of ``pyproject.toml`` that provides it, e.g. ``"report"``.
        purpose: what needs it, as the start of the message, e.g. ``"the HTML report"``.

    Example:
        >>> require("json", "report", "the HTML report").__name__
        'json'
        >>> require("no_such_module_x", "report", "the HTML report")
        Traceback (most recent call last):
        ...
        autoprune.errors.AutopruneError: the HTML report needs no_such_module_x: pip install 'autoprune[report]'
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AutopruneError(f"{purpose} needs {module}: pip install 'autoprune[{extra}]'") from None
