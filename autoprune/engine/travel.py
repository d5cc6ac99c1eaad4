"""The objects a search from Python hands over (:class:`~autoprune.engine.context.Given`), sent to worker
processes and Ray workers: pickled with cloudpickle, which sends a function or class defined in a script or a
notebook by value and one from an importable module by reference (its import path).

Each part is tried on its own first, so a part that cannot travel (a lambda over an open file, a data set holding a
database connection) is one error naming it, before any trial runs.

Example:
    >>> import torch
    >>> from autoprune.data.given import given_splits
    >>> data = torch.utils.data.TensorDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long))
    >>> given = Given(torch.nn.Conv2d(1, 1, 1), given_splits(data, data, None, 1))
    >>> type(unpack(pack(given)).model).__name__
    'Conv2d'
"""

from __future__ import annotations

from typing import Any

import cloudpickle

from autoprune.engine.context import Given
from autoprune.errors import AutopruneError, first_line


def parts(given: Given) -> dict[str, Any]:
    """Each part of ``given`` under the name a user knows it by (the argument of ``autoprune.search``)."""
    out: dict[str, Any] = {"model": given.model}
    for name in ("train", "val", "test"):
        fetch = getattr(given.data, name).fetch
        out[f"{name}_data"] = fetch.dataset
        out[f"{name}_data's collate_fn"] = fetch.collate
    out["batch"] = given.data.val.fetch.adapter
    if given.score is not None:
        out["score"] = given.score.fn
    if given.loss is not None:
        out["loss"] = given.loss
    return out


def pack(given: Given) -> bytes:
    """``given`` as bytes for another process; a part that cannot be pickled is an error naming it."""
    for name, part in parts(given).items():
        try:
            cloudpickle.dumps(part)
        except Exception as exc:  # noqa: BLE001 - whatever pickling raises for the user's object
            raise AutopruneError(f"{name} cannot travel to worker processes ({first_line(exc, 200)}): define it at "
                                 "the top level of a module or script, without open files, locks or connections, "
                                 "or search in this process (workers=1, backend='optuna')", field=name) from None
    return cloudpickle.dumps(given)


def unpack(blob: bytes) -> Given:
    """What :func:`pack` made, in a worker process."""
    return cloudpickle.loads(blob)
