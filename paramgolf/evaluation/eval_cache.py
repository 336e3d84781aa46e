"""Evaluation-time caches (n-gram backoff and the like): the `eval_cache` config group.

`none` scores the model's own softmax. Caches mix another distribution into it through the
scoring stream (`paramgolf.evaluation.stream`) and are checked by running them.
"""

from __future__ import annotations

from paramgolf.evaluation.identity import Identity


class NoEvalCache(Identity):
    """No cache: the scored distribution is the model's softmax over the full vocabulary."""
