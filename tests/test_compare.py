"""McNemar's exact test against hand-computed binomial tails."""

from __future__ import annotations

from math import comb

import pytest

from autoprune.metrics.mcnemar import mcnemar_exact, paired


@pytest.mark.parametrize("b,c", [(10, 2), (2, 10), (7, 0), (30, 18), (1, 1)])
def test_mcnemar_exact_is_the_two_sided_binomial_tail(b, c):
    n, k = b + c, min(b, c)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2 ** n
    assert mcnemar_exact(b, c) == pytest.approx(min(1.0, 2 * tail), rel=1e-9)


def test_no_disagreement_is_no_evidence_and_counts_must_be_counts():
    assert mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_paired_counts_only_the_images_the_models_disagree_on():
    a = [True] * 60 + [False] * 40
    b = [True] * 50 + [False] * 10 + [True] * 5 + [False] * 35
    p = paired(a, b)
    assert (p.images, p.only_a, p.only_b) == (100, 10, 5)
    assert (p.accuracy_a, p.accuracy_b) == (0.6, 0.55) and p.difference == pytest.approx(0.05)
    assert p.p_value == pytest.approx(mcnemar_exact(10, 5))
    with pytest.raises(ValueError, match="different numbers of images"):
        paired([True], [True, False])
