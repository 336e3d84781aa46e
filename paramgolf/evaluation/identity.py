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

    def end(self, model) -> None:  # ttt: after the stream, put back what begin changed
        pass

    def score_logits(self, model, x, *, seen, positions, first):  # ttt: the logits a batch is scored with
        return model(x)

    def adapt(self, model, seen, chunk) -> None:  # ttt: after a chunk is scored
        pass

    def score(self, x, y, log_probs, mask):  # eval_cache: log-probability of each target
        return log_probs.gather(-1, y[..., None]).squeeze(-1)

    def distribution(self, x_row, j, log_probs_row):  # eval_cache: the full distribution at one position
        return log_probs_row

    def update(self, seen, chunk) -> None:  # eval_cache: after a chunk is scored
        pass
