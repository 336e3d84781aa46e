"""Evaluation-time caches (n-gram backoff and the like): the `eval_cache` config group.

`none` scores the model's own softmax. Caches (later issues) mix another distribution into
it and declare which legality rules they keep.
"""

from __future__ import annotations

from paramgolf.evaluation.compliance import RULES


class NoEvalCache:
    """No cache: the scored distribution is the model's softmax over the full vocabulary."""

    name = "none"

    def rules_kept(self) -> dict[str, bool]:
        return dict.fromkeys(RULES, True)
