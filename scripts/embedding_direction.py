"""How much of a trained model's matrices lies along a direction all their rows share.

The budget's surrogate gives the token embedding such a direction (docs/budget-estimate.md); this
measures it on a finished run's float weights, so the figure behind `EMBEDDING_SHARED_SHARE` can be
re-measured on any run. For every matrix, rows normalised to unit RMS: the energy share of its top
singular direction and of its mean row, and the same two for the budget's surrogate of that shape.

    python scripts/embedding_direction.py outputs/<date>/<time>        # a run directory
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def shares(w) -> dict[str, float]:
    import torch

    w = w.float().reshape(-1, w.shape[-1])
    w = w / w.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
    s = torch.linalg.svdvals(w).pow(2)
    mean = w.mean(0).pow(2).sum() / w.pow(2).sum(1).mean()
    return {"top_direction": round((s[0] / s.sum()).item(), 4), "mean_row": round(mean.item(), 4)}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    from safetensors.torch import load_file

    from paramgolf.quant.estimate import _is_control, surrogate_state_dict
    from paramgolf.runner.budget import EMBEDDING_SHARED_SHARE

    path = Path(sys.argv[1]) / "weights.safetensors"
    if not path.is_file():
        sys.exit(f"{path}: no such file (a run directory holds weights.safetensors once training ends)")
    weights = load_file(str(path))
    matrices = {k: v for k, v in weights.items() if v.ndim >= 2 and v.dtype.is_floating_point and not _is_control(k)}
    emb = {k: EMBEDDING_SHARED_SHARE for k in matrices if "emb" in k}
    surrogate = surrogate_state_dict(matrices, seed=0, shared_share=emb)
    for name, w in matrices.items():
        row = {"tensor": name, "shape": list(w.shape), "trained": shares(w), "surrogate": shares(surrogate[name])}
        print(json.dumps(row))


if __name__ == "__main__":
    main()
