"""The pr1855 preset end to end on the CPU, shrunk: CaseOps data built from the enwiki sample → packed
training with the loop switching on → GPTQ + LQER export under per-group lrzip → the artifact's round trip,
scored on the original text's bytes (the sidecar) and judged by the legality check."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from paramgolf.config.compose import compose, to_container
from paramgolf.data import caseops
from paramgolf.data.build import build_dataset
from paramgolf.data.shards import list_shards, read_shard, sidecar_path
from paramgolf.quant.artifact import MAGIC, read_artifact
from paramgolf.quant.pergroup import MAGIC as PERGROUP_MAGIC
from paramgolf.runner.pipeline import run
from paramgolf.runner.stages import rebuild_from_artifact

VOCAB, VAL_DOCS, STEPS = 1024, 10, 8

# The preset's structure (11 layers, loop 3–5 ×3, two lanes from layer 8, gates, LQER top 3), at d64.
SHRINK = [
    "logger=none",
    f"arch.vocab_size={VOCAB}",
    "arch.model_dim=64",
    "arch.attention.num_heads=4",
    "arch.attention.num_kv_heads=2",
    "arch.attention.rope_dims=8",
    f"train.iterations={STEPS}",
    "train.warmup_steps=1",
    "train.batch_tokens=1024",
    "train.seq_len=128",
    "train.micro_batches=1",
    "train.max_wallclock_seconds=null",  # the loop's enable_at then counts steps: on at step 3 of 8
    "train.progress=false",
    "eval.progress=false",
    "eval.batch_tokens=8192",
    "quant.keep_float_max_numel=1024",  # the shrunk matrices are quantized as the full ones would be
    "quant.calibration.batches=2",
    "quant.calibration.batch_seqs=2",
]


@pytest.fixture(scope="module")
def lrzip() -> str:
    found = shutil.which("lrzip")
    if found is None:
        pytest.skip("no lrzip on PATH: apt-get install lrzip (quant/codec=pergroup needs it)")
    return found


@pytest.fixture(scope="module")
def caseops_data(shared_dir, tmp_path_factory):
    """A CaseOps build of the enwiki sample whose validation split is its 10 shortest documents (CPU-sized)."""
    src = shared_dir / "data/corpus/enwiki_sample.jsonl"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    lines = src.read_text(encoding="utf-8").splitlines()
    val = set(sorted(range(len(lines)), key=lambda i: len(json.loads(lines[i])["text"]))[:VAL_DOCS])
    root = tmp_path_factory.mktemp("pr1855_caseops")
    docs = root / "docs.jsonl"
    docs.write_text("\n".join([lines[i] for i in sorted(val)] + [lines[i] for i in range(len(lines)) if i not in val]))
    info = build_dataset(docs, root / "data", VOCAB, VAL_DOCS, transform="caseops")
    val_texts = [json.loads(lines[i])["text"] for i in sorted(val)]
    return info, val_texts


@pytest.mark.slow
def test_shrunk_pr1855_trains_exports_with_lqer_per_group_and_round_trips_on_caseops(caseops_data, lrzip, tmp_path):
    info, val_texts = caseops_data
    data = [f"data.data_dir={info['out_dir']}", f"data.tokenizer_path={info['tokenizer']}"]
    c = to_container(compose(["experiment=pr1855", *SHRINK, *data]))
    assert c["data"]["_target_"].endswith("FineWebData") and c["train"]["loader"]["_target_"].endswith(
        "DocumentPackingLoader"
    )
    assert c["arch"]["num_layers"] == 11 and c["quant"]["codec"]["_target_"].endswith("PerGroup")
    assert run(c, tmp_path, 0, 1) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["status"] == "ok" and r["steps"] == STEPS and r["stopped_by"] == "iterations"

    # The loop switched on part-way (enable_at 0.35 of 8 steps) and the artifact rebuilds the looped model.
    log = (tmp_path / "train.log").read_text()
    assert "loop layers on at step 3 " in log
    model = rebuild_from_artifact(tmp_path / "model.pgart", torch.device("cpu"))
    assert model.looping and model.layer_split() == ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10])

    # Export: GPTQ on every matrix, LQER on exactly the top 3, stored under the per-group codec.
    q = r["quant"]
    assert q["codec"] == "pergroup" and q["codec_settings"].startswith("PerGroup(")
    assert {v["method"] for v in q["tensor_info"].values()} == {"gptq/sdclip"}
    corrected = {n for n, v in q["tensor_info"].items() if "lqer_corrected_fro" in v}
    assert len(corrected) == 3
    assert all(q["tensor_info"][n]["lqer_corrected_fro"] < q["tensor_info"][n]["lqer_residual_fro"] for n in corrected)
    raw = (tmp_path / "model.pgart").read_bytes()
    assert raw.startswith(MAGIC) and PERGROUP_MAGIC in raw[: 64 + len(MAGIC)]
    art = read_artifact(tmp_path / "model.pgart")
    assert art.codec == "pergroup" and len(raw) == r["model_bytes"] == q["model_bytes"]
    with_factors = {n for n, qt in art.qstate.items() if "lqer_a" in qt.tensors}
    assert with_factors == corrected
    for n in with_factors:
        t = art.qstate[n].tensors
        assert t["lqer_a"].shape[1] == t["lqer_b"].shape[0] == 4  # rank 4
    assert art.qstate["tok_emb.weight"].meta["bits"] == 7

    # The round trip: scored from the rebuilt artifact, one token set as before it, a small gap.
    ev, pre = r["eval"], r["pre_quant_eval"]
    assert ev["on"] == "artifact_round_trip" and ev["num_tokens"] == pre["num_tokens"]
    assert torch.isfinite(torch.tensor([r["val_bpb"], r["pre_quant_val_bpb"]])).all()
    assert r["round_trip_gap_bpb"] == pytest.approx(r["val_bpb"] - r["pre_quant_val_bpb"])
    assert abs(r["round_trip_gap_bpb"]) < 0.05

    # val_bpb's bytes are the original text's (the sidecar), not the case-encoded text's.
    original = sum(len(t.encode("utf-8")) for t in val_texts)
    assert info["bytes_val"] == r["num_val_bytes"] == original
    assert sum(len(caseops.encode(t).encode("utf-8")) for t in val_texts) != original
    (shard,) = list_shards(info["out_dir"], "val")
    sidecar = read_shard(sidecar_path(shard)).astype("int64")
    assert ev["num_bytes"] == pre["num_bytes"] == int(sidecar[1 : 1 + ev["num_tokens"]].sum())
    bits = r["val_loss"] * ev["num_tokens"] / torch.log(torch.tensor(2.0)).item()
    assert r["val_bpb"] == pytest.approx(bits / ev["num_bytes"], rel=1e-6)

    # Legality: checked by running it, and the calibration measured (no cap in this run: no verdict on it).
    comp = r["compliance"]
    assert comp["compliant"] is True and comp["verdict"] == "compliant"
    assert all(comp["checked"][k] is True for k in ("causal", "normalized", "score_first", "single_pass"))
    assert r["calibration_time_s"] > 0 and r["calibration_within_reserve"] is None
    assert r["fits"] is True and r["artifact_bytes"] == r["model_bytes"] + r["code_bytes"]
    assert os.path.getsize(tmp_path / "model.pgart") == r["model_bytes"]
