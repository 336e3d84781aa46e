"""The frontier records' architecture techniques (#1204–#1855): each one's defining property, off = unchanged."""

from __future__ import annotations

import functools

import pytest
import torch

from paramgolf.config.compose import compose, to_container
from paramgolf.errors import UserError
from paramgolf.model.attention import CausalSelfAttention
from paramgolf.model.attn_gate import AttnOutputGate
from paramgolf.model.loop import LoopLayers, LoopSwitch, loop_switch
from paramgolf.model.parallel import TwoLaneResidual
from paramgolf.model.smear_gate import InputSmearGate
from paramgolf.optim.groups import as_rule, assign_params
from paramgolf.runner.build import build_model, build_optimizer_for
from paramgolf.runner.distributed import DistEnv
from paramgolf.runner.train_loop import LoopSettings, Trainer

V = 61
TINY = ["arch.model_dim=32", f"arch.vocab_size={V}", "arch.attention.num_heads=4", "arch.attention.num_kv_heads=2"]


@functools.cache
def arch_config(*overrides: str) -> dict:
    return to_container(compose(list(overrides)))["arch"]


def tiny(*extra: str, layers: int = 5, seed: int = 0, noise: float = 0.2):
    """A small model whose every branch is non-trivial (zero-init projections and gates perturbed)."""
    torch.manual_seed(seed)
    model = build_model(arch_config(f"arch.num_layers={layers}", *TINY, *extra))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * noise)
    return model


def tokens(T: int = 16, seed: int = 3) -> torch.Tensor:
    return torch.randint(2, V, (2, T), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ the top record


@pytest.fixture(scope="module")
def pr1855():
    with torch.device("meta"):
        return build_model(arch_config("arch=pr1855"))


def test_pr1855_has_the_records_parameter_count_and_split(pr1855):
    model = pr1855
    roles = model.parameter_roles()
    by_role: dict[str, int] = {}
    for name, p in model.named_parameters():
        by_role[roles[name]] = by_role.get(roles[name], 0) + p.numel()
    assert sum(by_role.values()) == 35_945_671  # the record's log
    assert by_role["matrix"] + by_role["embedding"] == 35_913_728 and by_role["control"] == 31_943
    assert model.layer_split() == ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10])
    assert model.skip_weights.shape == model.skip_gates.shape == (8, 512)
    uses = model.parameter_uses()
    assert uses["blocks.3.attn.c_q.weight"] == 3 and uses["blocks.6.mlp.fc.weight"] == 1


def test_pr1855_routes_its_new_parameters_to_the_scalar_adam_group(pr1855):
    model = pr1855
    rules = [as_rule(r) for r in to_container(compose(["optimizer=muon_adam"]))["optimizer"]["rules"]]
    assigned = assign_params(list(model.named_parameters()), rules, model.parameter_roles())
    scalars = {n for n, _ in assigned["scalars"]}
    for name in ("parallel.resid_lambdas", "parallel.post_lambdas", "skip_gates", "smear.gate_w", "smear.lam"):
        assert name in scalars, name
    assert "blocks.4.attn.output_gate.attn_gate_w" in scalars


# ------------------------------------------------------------------------------------ loop layers (C2, C3)


def test_loop_order_of_the_top_record():
    loop = LoopLayers(11, start=3, end=5, num_loops=2)
    assert loop.order == [0, 1, 2] + [3, 4, 5] * 3 + [6, 7, 8, 9, 10]
    assert loop.split() == ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10])
    assert LoopLayers(11, start=4, end=5, num_loops=2).split() == ([0, 1, 2, 3, 4, 5, 4], [5, 4, 5, 6, 7, 8, 9, 10])


@pytest.mark.parametrize("kw", [dict(start=4, end=3), dict(start=0, end=5), dict(num_loops=0), dict(enable_at=1.5)])
def test_bad_loop_settings_are_user_errors(kw):
    with pytest.raises(UserError, match="arch.loop"):
        LoopLayers(5, **{"start": 1, "end": 2, **kw})


LOOP = ["arch/loop=layers", "arch.loop.start=1", "arch.loop.end=2", "arch.loop.num_loops=1"]


def test_looping_off_is_the_plain_model_and_on_is_not():
    looped, plain = tiny(*LOOP), tiny()
    state = plain.state_dict()
    assert looped.skip_weights.shape[0] == 3 and state["skip_weights"].shape[0] == 2  # 7 virtual layers: 3 skips
    state["skip_weights"] = torch.cat((state["skip_weights"], looped.skip_weights[2:].detach()))
    looped.load_state_dict(state)
    x = tokens()
    with torch.no_grad():
        assert looped.looping  # the architecture is the looped one
        on = looped(x)
        looped.set_looping(False)
        assert torch.equal(looped(x), plain(x))
    assert not torch.allclose(on, plain(x))
    assert looped.layer_split() == ([0, 1], [2, 3, 4])


def test_loop_switch_turns_looping_on_at_the_fraction_and_primes_both_graphs():
    model = tiny(*LOOP, "arch.loop.enable_at=0.5")
    said: list[str] = []
    hook = loop_switch(model, lambda step, elapsed_s: step / 10, said.append)
    assert isinstance(hook, LoopSwitch) and not model.looping  # training starts without the loop
    (phase,) = hook.warm_up_phases()
    with phase:
        assert model.looping
    assert not model.looping
    for step in range(5):
        hook.on_step_start(step, 0.0, 1.0)
        assert not model.looping
    hook.on_step_start(5, 0.0, 1.0)
    assert model.looping and hook.enabled_at_step == 5 and "step 5" in said[0]
    saved = hook.state_dict()
    model.set_looping(False)
    hook.load_state_dict(saved)
    assert model.looping and hook.warm_up_phases() == []
    assert loop_switch(tiny(), lambda s, t: 1.0) is None  # no loop: no hook


def test_trainer_warm_up_also_runs_the_looped_model_and_rolls_it_back():
    model = tiny(*LOOP, noise=0.0)
    c = to_container(compose([]))
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(m.looping))
    hook = loop_switch(model, lambda step, elapsed_s: 0.0)

    class Loader:
        def next_batch(self, micro_tokens, seq_len):
            x = torch.randint(0, V, (micro_tokens // seq_len, seq_len + 1), generator=torch.Generator().manual_seed(5))
            return x[:, :-1], x[:, 1:]

    s = LoopSettings(
        iterations=2,
        batch_tokens=64,
        seq_len=16,
        micro_batches=1,
        warmup_steps=2,
        max_wallclock_seconds=None,
        val_every=0,
        log_every=1,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer_for(model, c["optimizer"])
    Trainer(model, model, opt, Loader, s, DistEnv(0, 1, 0, torch.device("cpu")), hooks=[hook]).warm_up()
    assert seen == [False, False, True, True] and not model.looping
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------ parallel residuals (C5)


def test_two_lane_update_formula():
    lanes = TwoLaneResidual(3, start=1)
    with torch.no_grad():
        lanes.resid_lambdas[2] = torch.tensor([2.0, 3.0])
        lanes.post_lambdas[2] = torch.tensor([[5.0, 7.0], [11.0, 13.0]])  # [attn→lane0, attn→lane1], [mlp→…]
    one = torch.ones(1, 1, 2)
    a, m = 1.0 * one, 100.0 * one
    lane0, lane1 = lanes(2, 10 * one, 1000 * one, a, m)
    assert torch.equal(lane0, (2 * 10 + 5 * 1 + 11 * 100) * one)
    assert torch.equal(lane1, (3 * 1000 + 7 * 1 + 13 * 100) * one)
    assert torch.equal(TwoLaneResidual.merge(lane0, lane1), (lane0 + lane1) / 2)
    fresh = TwoLaneResidual(11)
    assert fresh.start == 8 and fresh.resid_lambdas.shape == (11, 2) and fresh.post_lambdas.shape == (11, 2, 2)
    assert torch.all(fresh.resid_lambdas == 1.1) and torch.all(fresh.post_lambdas == 1.0)


PARALLEL = ["arch/parallel=two_lane", "arch.parallel.start=3"]


def test_parallel_layers_are_the_decoders_last_and_change_the_output():
    model = tiny(*PARALLEL)
    x = tokens()
    with torch.no_grad():
        out = model(x)
        mlp_lane_only = model.parallel.post_lambdas.clone()
        model.parallel.post_lambdas[:, 0, 1] = 0  # attention no longer writes into the MLP lane
        model.parallel.post_lambdas[:, 1, 0] = 0  # nor the MLP into the attention lane
        assert not torch.allclose(model(x), out)  # the lambdas are used
        model.parallel.post_lambdas.copy_(mlp_lane_only)
        model.parallel.resid_lambdas[:3] = 7.0  # rows of layers before the start are never read
        assert torch.equal(model(x), out)
    with pytest.raises(UserError, match="arch.parallel.start"):  # layer 1 is an encoder layer of 5
        tiny("arch/parallel=two_lane", "arch.parallel.start=1")
    with pytest.raises(UserError, match="arch.parallel.start"):  # loop 2–3 repeats 2 after 3
        tiny(*LOOP[:1], "arch.loop.start=2", "arch.loop.end=3", "arch/parallel=two_lane", "arch.parallel.start=3")


def test_parallel_skip_goes_into_the_attention_lane_only():
    """With the lanes kept apart (no cross writes), the MLP lane never sees the parallel layers' skips."""
    model = tiny(*PARALLEL, layers=4)  # encoder [0, 1], decoder [2, 3]; lanes from layer 3
    with torch.no_grad():
        model.parallel.post_lambdas[:, 0, 1] = 0
        model.parallel.post_lambdas[:, 1, 0] = 0
    captured: list[torch.Tensor] = []
    model.blocks[3].mlp.register_forward_pre_hook(lambda m, args: captured.append(args[0].clone()))
    x = tokens()
    with torch.no_grad():
        a = model(x)
        model.skip_weights[1].mul_(3.0)  # the skip into layer 3, the first parallel one
        b = model(x)
    assert torch.equal(captured[0], captured[1])  # the MLP read the same lane1
    assert not torch.allclose(a, b)  # while the skip did change the output (through lane0)


# ------------------------------------------------------------------------------------ gated skips (C6)


def test_skip_gates_lerp_between_the_skip_and_the_stream():
    model = tiny("arch.skip_gates=true", layers=4, noise=0.0)
    x, skip = torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    w = model.skip_weights[0]
    assert torch.all(model.skip_gates == 0)
    assert torch.allclose(model._add_skip(x, 0, skip), 0.5 * x + 0.5 * w * skip, atol=1e-6)  # σ(0) = 0.5
    with torch.no_grad():
        model.skip_gates.fill_(40.0)
        assert torch.allclose(model._add_skip(x, 0, skip), x, atol=1e-6)
        model.skip_gates.fill_(-40.0)
        assert torch.allclose(model._add_skip(x, 0, skip), w * skip, atol=1e-6)
    plain = tiny(layers=4, noise=0.0)
    assert plain.skip_gates is None and torch.equal(plain._add_skip(x, 0, skip), x + plain.skip_weights[0] * skip)


# ------------------------------------------------------------------------------------ SmearGate (C7)


def _packed(doc_a_tail: int) -> torch.Tensor:
    """Two documents in one row: [BOS a a a a] [BOS b b b b b], doc a's tokens chosen by the argument."""
    return torch.tensor([[1, 5, 6, 7, doc_a_tail, 1, 9, 10, 11, 12, 13]])


def _smear_out(gate: InputSmearGate, ids: torch.Tensor) -> torch.Tensor:
    emb = torch.nn.Embedding(V, 16)
    torch.nn.init.normal_(emb.weight, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return gate(emb(ids), ids)


def test_input_smear_gate_is_identity_at_init_and_smears_by_its_gate():
    gate = InputSmearGate(16, window=4)
    x, ids = torch.randn(1, 6, 16), torch.randint(2, V, (1, 6))
    assert torch.equal(gate(x, ids), x)
    with torch.no_grad():
        gate.lam.fill_(0.5)
        gate.gate_w.fill_(0.1)
    g = 0.5 * torch.sigmoid(x[:, 1:, :4].sum(-1, keepdim=True) * 0.1)
    assert torch.allclose(gate(x, ids)[:, 1:], x[:, 1:] + g * x[:, :-1])
    assert torch.equal(gate(x, ids)[:, 0], x[:, 0])
    x2 = x.clone()
    x2[:, 3, 4:] += 1.0  # dims beyond the window change the smeared value, not the gate
    assert torch.allclose(gate(x2, ids)[:, 4] - x2[:, 4], g[:, 3] * x2[:, 3])


def test_bos_mask_keeps_the_previous_document_out_and_the_unmasked_gate_leaks_it():
    masked, leaky = InputSmearGate(16), InputSmearGate(16, bos_mask=False)
    for gate in (masked, leaky):
        with torch.no_grad():
            gate.lam.fill_(1.0)
            gate.gate_w.normal_(generator=torch.Generator().manual_seed(1))
    a, b = _packed(8), _packed(40)  # only the last token of the first document differs
    assert torch.equal(_smear_out(masked, a)[:, 5:], _smear_out(masked, b)[:, 5:])  # from the BOS on: nothing
    assert not torch.allclose(_smear_out(leaky, a)[:, 5], _smear_out(leaky, b)[:, 5])  # the leak into the BOS
    assert torch.equal(_smear_out(masked, a)[:, :5], _smear_out(leaky, a)[:, :5])  # no BOS there: the same


def test_gpt_passes_token_ids_to_the_smear_gate():
    ids = _packed(8)
    with torch.no_grad():
        masked = tiny("arch/smear=input_gate")(ids)
        leaky = tiny("arch/smear=input_gate", "arch.smear.bos_mask=false")(ids)
    assert torch.equal(masked[:, :5], leaky[:, :5]) and not torch.allclose(masked[:, 5:], leaky[:, 5:])


# ------------------------------------------------------------------------------------ attention output gates


def test_sparse_attn_gate_reads_only_its_window_and_starts_at_one_half():
    gate = AttnOutputGate(32, 4, window=12, scale=0.5)
    x = torch.randn(2, 5, 32)
    assert gate.attn_gate_w.shape == (4, 12) and torch.equal(gate(x), torch.full((2, 5, 4), 0.5))
    with torch.no_grad():
        gate.attn_gate_w.normal_()
    y = x.clone()
    y[..., 12:] = torch.randn(2, 5, 20)
    assert torch.equal(gate(x), gate(y))
    assert torch.allclose(gate(x), torch.sigmoid(0.5 * x[..., :12] @ gate.attn_gate_w.t()))
    assert torch.equal(AttnOutputGate(32, 4, double=True)(x), torch.ones(2, 5, 4))  # AttnOutGate: 2σ(0) = 1
    dense = AttnOutputGate(512, 8, window=None, init_std=0.005)
    assert dense.attn_gate_w.shape == (8, 512) and 0.004 < dense.attn_gate_w.std() < 0.006
    with pytest.raises(UserError, match="output_gate.window"):
        AttnOutputGate(8, 2, window=12)


def test_attention_with_a_zero_sparse_gate_is_half_the_plain_attention():
    torch.manual_seed(0)
    plain = CausalSelfAttention(32, num_heads=4, num_kv_heads=2)
    torch.manual_seed(0)
    gated = CausalSelfAttention(32, num_heads=4, num_kv_heads=2, output_gate=lambda d, h: AttnOutputGate(d, h))
    with torch.no_grad():
        plain.proj.weight.normal_()
        gated.proj.weight.copy_(plain.proj.weight)
    x = torch.randn(2, 7, 32)
    assert torch.allclose(gated(x, None, {}), 0.5 * plain(x, None, {}), atol=1e-6)
    with pytest.raises(UserError, match="choose one"):
        CausalSelfAttention(32, num_heads=4, num_kv_heads=2, gated=True, output_gate=lambda d, h: AttnOutputGate(d, h))


# ------------------------------------------------------------------------------------ layer 0 without attention (C11)


def test_layer0_without_attention_is_mlp_only():
    model = tiny("arch.disable_layer0_attn=true", layers=3)
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("blocks.0.attn") for n in names)
    assert any(n.startswith("blocks.1.attn.") for n in names)
    plain = tiny(layers=3)
    attn0 = sum(p.numel() for n, p in plain.named_parameters() if n.startswith("blocks.0.attn"))
    assert sum(p.numel() for p in plain.parameters()) - sum(p.numel() for p in model.parameters()) == attn0
    x = tokens()
    with torch.no_grad():
        out = model(x)
        for p in model.blocks[1].attn.parameters():
            p.add_(1.0)
        assert not torch.allclose(model(x), out)  # later attention still runs
    with pytest.raises(UserError, match="recurrence"):
        tiny("arch.disable_layer0_attn=true", "arch.recurrence=[0,1,0]", layers=3)


# ------------------------------------------------------------------------------------ combined, varlen


ALL = [*LOOP, *PARALLEL, "arch.skip_gates=true", "arch/smear=input_gate", "arch/attention/output_gate=sparse"]
ALL += ["arch.attention.output_gate.window=8", "arch.smear.window=8", "arch.attention.xsa_last_n=5"]


@pytest.mark.parametrize("looping", [False, True])
@pytest.mark.parametrize("t", [0, 7, 14])
def test_the_full_stack_is_causal(looping, t):
    model = tiny(*ALL)
    model.set_looping(looping)
    x = tokens()
    y = x.clone()
    y[:, t + 1 :] = torch.randint(2, V, (2, 15 - t))
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_varlen_documents_are_independent():
    pytest.importorskip("paramgolf.model.varlen")
    model = tiny(*ALL)
    doc_a = torch.tensor([[1, 5, 6, 7, 8, 9]])
    doc_b = torch.tensor([[1, 20, 21, 22, 23, 24, 25, 26]])
    packed = torch.cat((doc_a, doc_b), dim=1)
    cu = torch.tensor([0, 6, 14], dtype=torch.int32)
    with torch.no_grad():
        together = model(packed, cu_seqlens=cu, max_seqlen=8)
        alone = torch.cat((model(doc_a), model(doc_b)), dim=1)
        dense = model(packed)
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(dense[:, 6:], alone[:, 6:], atol=1e-3)  # without cu_seqlens, b sees a


@pytest.mark.slow  # about a minute of tracing on a CPU
def test_the_full_stack_traces_as_one_graph_with_and_without_varlen():
    """fullgraph=True (as the runner compiles) with the loop off and on, dense and with cu_seqlens."""
    pytest.importorskip("paramgolf.model.varlen")
    torch._dynamo.reset()
    model = tiny(*ALL)
    traced = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
    x = tokens()[:1]
    cu = torch.tensor([0, 5, 16], dtype=torch.int32)
    with torch.no_grad():
        for looping in (False, True):
            model.set_looping(looping)
            assert torch.allclose(traced(x), model(x), atol=1e-5)
            assert torch.allclose(
                traced(x, cu_seqlens=cu, max_seqlen=11), model(x, cu_seqlens=cu, max_seqlen=11), atol=1e-5
            )
    torch._dynamo.reset()
