"""The identity evaluation-time method: nothing adapts, the model's own softmax is scored.

`ttt=none` and `eval_cache=none` are this; it keeps the four legality rules trivially and
implements the scoring stream's interface (`paramgolf.evaluation.stream`) as no-ops.
"""

from __future__ import annotations

from paramgolf.evaluation.compliance import RULES


class Identity:
    name = "none"

    def rules_kept(self) -> dict[str, bool]:
        return dict.fromkeys(RULES, True)

    def begin(self, *args) -> None:  # fresh state before a stream
        pass

    def adapt(self, model, seen, chunk) -> None:  # ttt: after a chunk is scored
        pass

    def mix(self, x, log_probs):  # eval_cache: the scored distribution
        return log_probs

    def update(self, seen, chunk) -> None:  # eval_cache: after a chunk is scored
        pass
