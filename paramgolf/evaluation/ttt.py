"""Test-time training strategies: the `ttt` config group.

`none` is the baseline's choice: the artifact's weights score every validation token
unchanged. `score_first` is `paramgolf.evaluation.score_first.ScoreFirstTTT`.
"""

from __future__ import annotations

from paramgolf.evaluation.identity import Identity


class NoTTT(Identity):
    """No test-time training; keeps all four legality rules trivially (nothing adapts)."""
