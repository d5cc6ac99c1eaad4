"""Whether a win is real: two models' accuracies compared on the same images with McNemar's exact test.

Only the images the two models disagree on carry information: ``b`` images only the first gets right, ``c``
only the second. Under the null hypothesis (the models are equally accurate) each disagreement is a fair coin,
so the two-sided p-value is an exact binomial test of ``min(b, c)`` successes in ``b + c`` trials at 1/2.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from typing import Sequence


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant images.

    >>> mcnemar_exact(0, 0)
    1.0
    >>> round(mcnemar_exact(10, 2), 4)  # 10 images only the pick got right, 2 only the baseline
    0.0386
    >>> round(mcnemar_exact(6, 5), 4)
    1.0
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(min(1.0, binomtest(min(b, c), n, 0.5, alternative="two-sided").pvalue))


@dataclass(frozen=True)
class Paired:
    """Two models on the same ``images``: their accuracies, the discordant counts and McNemar's p-value."""

    images: int
    accuracy_a: float
    accuracy_b: float
    only_a: int
    only_b: int
    p_value: float

    @property
    def difference(self) -> float:
        return self.accuracy_a - self.accuracy_b

    def to_dict(self) -> dict:
        return {**asdict(self), "difference": self.difference}


def paired(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> Paired:
    """Compare per-image correctness of model a and model b on the same images (same order).

    >>> p = paired([True, True, True, False], [True, False, False, False])
    >>> (p.accuracy_a, p.accuracy_b, p.only_a, p.only_b, p.p_value)
    (0.75, 0.25, 2, 0, 0.5)
    """
    if len(correct_a) != len(correct_b):
        raise ValueError(f"the two models were scored on different numbers of images: {len(correct_a)} and "
                         f"{len(correct_b)}")
    n = len(correct_a)
    only_a = sum(1 for a, b in zip(correct_a, correct_b) if a and not b)
    only_b = sum(1 for a, b in zip(correct_a, correct_b) if b and not a)
    return Paired(n, sum(map(bool, correct_a)) / max(1, n), sum(map(bool, correct_b)) / max(1, n), only_a, only_b,
                  mcnemar_exact(only_a, only_b))


def encode_hits(hits: Sequence[bool]) -> str:
    """Per-image correctness packed into a short string (one bit an image, base64), to store with a score.

    >>> encode_hits([True, False, True])
    'oA=='
    >>> decode_hits(encode_hits([True, False, True] * 5), 15) == [True, False, True] * 5
    True
    """
    packed = bytearray((len(hits) + 7) // 8)
    for i, hit in enumerate(hits):
        if hit:
            packed[i // 8] |= 0x80 >> (i % 8)
    return base64.b64encode(bytes(packed)).decode("ascii")


def decode_hits(text: str, n: int) -> list[bool]:
    """The first ``n`` per-image results of :func:`encode_hits`."""
    packed = base64.b64decode(text.encode("ascii"))
    if len(packed) * 8 < n:
        raise ValueError(f"the stored results hold {len(packed) * 8} images, not {n}")
    return [bool(packed[i // 8] & (0x80 >> (i % 8))) for i in range(n)]
