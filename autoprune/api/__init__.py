"""The api wing: a search from Python over the user's own objects (:func:`search`) and what it returns
(:class:`SearchResult`, :class:`Candidate`). Depends on deliver and below; the CLI sits above it.
"""

from __future__ import annotations

from autoprune.api.result import Candidate, Final, SearchResult, load_result
from autoprune.api.search import search

__all__ = ["Candidate", "Final", "SearchResult", "load_result", "search"]
