"""Test-time training strategies: the `ttt` config group.

`none` is the baseline's choice: the artifact's weights score every validation token
unchanged. Score-first TTT and per-document LoRA TTT (later issues) adapt the model and
declare which legality rules they keep.
"""

from __future__ import annotations

from paramgolf.evaluation.compliance import RULES


class NoTTT:
    """No test-time training; keeps all four legality rules trivially (nothing adapts)."""

    name = "none"

    def rules_kept(self) -> dict[str, bool]:
        return dict.fromkeys(RULES, True)
