"""Per-group lrzip/ZPAQ compression (FRONTIER F10): routing, the L1 chain, the stored layout, exact round trips.

The tests that run lrzip skip when it is missing; with PARAMGOLF_INSTALL_LRZIP=1 (.ci/run) they
install Debian's package first (as root, apt-get capped at 300 s, else skip).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("brotli")

from paramgolf.errors import UserError  # noqa: E402
from paramgolf.quant import pergroup  # noqa: E402
from paramgolf.quant.artifact import build_payload, pack_artifact, unpack_artifact  # noqa: E402
from paramgolf.quant.codecs import OversizedPayload, codec_by_name  # noqa: E402
from paramgolf.quant.pergroup import PerGroup, l1_chain, l1_distances, route  # noqa: E402
from paramgolf.quant.schemes import QuantizedTensor  # noqa: E402


def _int8(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 6).round().clamp(-31, 31).to(torch.int8)


def _record(rows: int, cols: int, seed: int) -> QuantizedTensor:
    scale = torch.rand(rows, generator=torch.Generator().manual_seed(seed)).half()
    return QuantizedTensor("int8_row", (rows, cols), "float32", {"q": _int8(rows, cols, seed), "scale": scale})


def _qstate(layers=(0, 2, 10)) -> dict[str, QuantizedTensor]:
    """A small model's records: every group, layers out of order, plus tensors no group takes."""
    q: dict[str, QuantizedTensor] = {"tok_emb.weight": _record(24, 8, 1)}
    for i in reversed(layers):
        for j, (name, shape) in enumerate(
            [("attn.c_q", (8, 8)), ("attn.c_k", (4, 8)), ("attn.c_v", (4, 8)), ("attn.proj", (8, 8))]
            + [("mlp.fc", (16, 8)), ("mlp.proj", (8, 16)), ("attn.gate.proj", (2, 8))]
        ):
            q[f"blocks.{i}.{name}.weight"] = _record(*shape, seed=100 * i + j)
        q[f"blocks.{i}.attn_scale"] = QuantizedTensor("fp16", (8,), "float32", {"w": torch.ones(8).half()})
    q["lm_head.weight"] = _record(24, 8, 7)
    return q


def _payload() -> bytes:
    return build_payload(_qstate(), {"model_dim": 8})


def _reference_chain(m: np.ndarray) -> list[int]:
    """The chain written out plainly: from row 0, always the nearest unused row (first on ties)."""
    m = m.astype(np.int64)
    order, left = [0], list(range(1, len(m)))
    while left:
        d = [int(np.abs(m[j] - m[order[-1]]).sum()) for j in left]
        order.append(left.pop(int(np.argmin(d))))
    return order


def test_l1_distances_are_exact():
    m = _int8(37, 11, 3)
    want = (m[:, None, :].long() - m[None, :, :].long()).abs().sum(-1)
    assert torch.equal(l1_distances(m, block=8), want.float())
    extreme = torch.tensor([[-128] * 600, [127] * 600], dtype=torch.int8)
    assert l1_distances(extreme)[0, 1].item() == 255 * 600


def test_l1_chain_is_the_greedy_nearest_neighbour_chain():
    for seed, (rows, cols) in enumerate([(1, 4), (2, 3), (30, 5), (64, 16)]):
        m = _int8(rows, cols, seed)
        assert l1_chain(m).tolist() == _reference_chain(m.numpy())
    ties = torch.tensor([[0, 0], [1, 1], [0, 0], [1, 1], [0, 1]], dtype=torch.int8)  # duplicate rows: ties
    assert l1_chain(ties).tolist() == _reference_chain(ties.numpy()) == [0, 2, 4, 1, 3]


def test_route_takes_the_records_groups_in_layer_order():
    groups = route(_payload())
    assert list(groups) == list(pergroup.GROUPS)
    names = {g: [t[0] for t in ts] for g, ts in groups.items()}
    assert names["tok_emb"] == ["tok_emb.weight/q"]
    assert names["mlp.fc"] == [f"blocks.{i}.mlp.fc.weight/q" for i in (0, 2, 10)]  # 10 after 2
    everything = {n for ns in names.values() for n in ns}
    assert not any("gate" in n or "lm_head" in n or "scale" in n for n in everything)
    assert route(b"not a safetensors blob") == {} and route(b"") == {}


def test_settings_are_checked():
    with pytest.raises(UserError, match="quant.codec.hot"):
        PerGroup(hot=["lm_head"])
    with pytest.raises(UserError, match="quant.codec.level"):
        PerGroup(level=0)
    with pytest.raises(UserError, match="quant.codec.threads"):
        PerGroup(threads=-1)


def test_a_missing_lrzip_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(pergroup.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="apt-get install lrzip.*brew install lrzip"):
        PerGroup().compress(_payload())


def test_round_trip_is_byte_exact(lrzip):
    payload = _payload()
    for codec in (PerGroup(level=1), PerGroup(hot=[], level=1, lz4_test=True)):
        blob = codec.compress(payload)
        assert blob[:4] == b"PGRP"
        assert codec_by_name("pergroup").decompress(blob, len(payload)) == payload
    for data in (b"", b"x", os.urandom(3000)):  # not safetensors: all of it is the brotli'd rest
        assert PerGroup().decompress(PerGroup(level=1).compress(data)) == data


def test_groups_are_stored_sorted_and_transposed(lrzip):
    """What lrzip sees for a hot group: each layer's rows in chain order, written column by column."""
    q = _qstate()
    blob = PerGroup(level=1).compress(build_payload(q, {"model_dim": 8}))
    streams = pergroup._split(blob)
    names = list(route(build_payload(q, {"model_dim": 8})))
    codec = PerGroup()
    fc = codec._lrzip(lrzip, streams[3 + names.index("mlp.fc")][2], "-d")
    want = b""
    for i in (0, 2, 10):
        m = q[f"blocks.{i}.mlp.fc.weight"].tensors["q"]
        want += m[l1_chain(m)].T.contiguous().numpy().tobytes()
    assert fc == want
    proj = codec._lrzip(lrzip, streams[3 + names.index("mlp.proj")][2], "-d")  # not hot: transposed only
    assert proj == b"".join(
        q[f"blocks.{i}.mlp.proj.weight"].tensors["q"].T.contiguous().numpy().tobytes() for i in (0, 2, 10)
    )
    perms = codec._rest.decompress(streams[2][2])
    first = np.frombuffer(perms, dtype="<u2", count=24)  # tok_emb's 24 rows come first
    assert first.tolist() == l1_chain(q["tok_emb.weight"].tensors["q"]).tolist()


def test_decompression_is_bounded_and_damage_is_refused(lrzip, monkeypatch):
    payload = _payload()
    blob = PerGroup(level=1).compress(payload)
    with pytest.raises(OversizedPayload):
        PerGroup().decompress(blob, len(payload) - 1)
    with pytest.raises(ValueError):
        PerGroup().decompress(blob[:-5])
    with pytest.raises(ValueError, match="pergroup"):
        PerGroup().decompress(b"PGRQ" + blob[4:])
    monkeypatch.setattr(pergroup.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="apt-get install lrzip"):
        PerGroup().decompress(blob)


def test_an_artifact_reads_back(lrzip):
    q = _qstate()
    art = unpack_artifact(pack_artifact(q, {"model_dim": 8}, PerGroup(level=1)))
    assert art.codec == "pergroup"
    for name, qt in q.items():
        for part, t in qt.tensors.items():
            assert torch.equal(art.qstate[name].tensors[part], t), (name, part)


def test_the_config_option_composes():
    from hydra.utils import instantiate

    from paramgolf.config.compose import compose

    codec = instantiate(compose(["quant/codec=pergroup"]).quant.codec)
    assert isinstance(codec, PerGroup) and codec.hot == pergroup.HOT_GROUPS and codec.level == 9


@pytest.mark.slow
def test_the_budget_estimates_with_it(lrzip):
    from paramgolf.config.compose import compose, to_container
    from paramgolf.runner.budget import budget_report

    overrides = ["experiment=smoke", "quant/codec=pergroup", "arch.num_layers=2", "arch.model_dim=64"]
    report = budget_report(to_container(compose(overrides)))
    assert report["codec"] == "PerGroup" and report["estimated_model_bytes"] > 0


def test_the_export_report_gives_each_streams_bytes(lrzip):
    """codec_streams: one entry per stream of the container, whose stored bytes make up the payload."""
    from paramgolf.config.compose import compose
    from paramgolf.quant.artifact import _split_frame
    from paramgolf.quant.export import build_artifact
    from paramgolf.runner.build import instantiate_unwrapped

    quantizer = instantiate_unwrapped(compose(["experiment=smoke", "quant=pr1855"]).quant.quantizer)
    g = torch.Generator().manual_seed(0)
    state = {
        "tok_emb.weight": torch.randn(256, 128, generator=g) * 0.05,
        "blocks.0.attn.c_q.weight": torch.randn(128, 128, generator=g) * 0.05,
        "blocks.0.mlp.fc.weight": torch.randn(256, 128, generator=g) * 0.05,
        "blocks.0.attn_scale": torch.ones(128),
    }
    blob, report = build_artifact(quantizer, PerGroup(level=1), state, {}, {})
    streams = report["codec_streams"]
    assert list(streams)[:3] == ["manifest", "rest", "permutations"]
    assert {"tok_emb", "attn.c_q", "mlp.fc"} <= set(streams)
    assert streams["tok_emb"]["raw"] == 256 * 128  # int8 codes, one byte each
    payload = _split_frame(blob, "test")[2]
    header = len(payload) - sum(s["stored"] for s in streams.values())
    assert 0 < header <= 16 + 17 * len(streams)  # the container's table only
