"""The artifact reader knows every scheme a quantizer writes, in a fresh process, by import alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import paramgolf
from paramgolf.quant.accounting import import_closure

PACKAGE_ROOT = Path(paramgolf.__file__).resolve().parents[1]  # the checkout whose paramgolf is tested

WRITER = """
import json, sys
import torch
from paramgolf.config.compose import compose, to_container
from paramgolf.quant.artifact import save_weights, write_artifact
from paramgolf.quant.codecs import Zlib
from paramgolf.quant.mixed import MixedQuantizer, pack_state
from paramgolf.quant.schemes import dequantize_state

out = sys.argv[1]
c = to_container(compose(["experiment=smoke", "quant=int6_rtn"]))
q = c["quant"]["quantizer"]
assert q["_target_"] == "paramgolf.quant.mixed.MixedQuantizer", q["_target_"]
quantizer = MixedQuantizer(q["table"])
g = torch.Generator().manual_seed(0)
state = {"blocks.0.attn.c_q.weight": torch.randn(96, 64, generator=g),
         "blocks.0.attn_scale": torch.rand(64, generator=g),
         "tok_emb.weight": torch.randn(128, 64, generator=g),
         "small.weight": torch.randn(4, 4, generator=g)}
roles = {"blocks.0.attn.c_q.weight": "matrix", "blocks.0.attn_scale": "control", "tok_emb.weight": "embedding",
         "small.weight": "matrix"}
qstate = quantizer.quantize(state, roles=roles)
packed = pack_state(qstate)
write_artifact(out + "/int8.pgolf", qstate, {"model_dim": 64}, Zlib())
write_artifact(out + "/bits.pgolf", packed, {"model_dim": 64}, Zlib())
save_weights(out + "/expected.safetensors", dequantize_state(qstate))
print(json.dumps({"int8": sorted({qt.scheme for qt in qstate.values()}),
                  "bits": sorted({qt.scheme for qt in packed.values()})}))
"""

READER = """
import json, sys
import torch
from paramgolf.quant.artifact import load_weights, read_artifact

out = sys.argv[1]
expected, _ = load_weights(out + "/expected.safetensors")
schemes = {}
for kind in ("int8", "bits"):
    loaded = read_artifact(out + "/" + kind + ".pgolf")
    assert list(loaded.state_dict) == list(expected), kind
    for name, t in expected.items():
        assert torch.equal(loaded.state_dict[name], t), (kind, name)
    schemes[kind] = sorted({qt.scheme for qt in loaded.qstate.values()})
quant_modules = sorted(m for m in sys.modules if m.startswith("paramgolf.quant."))
print(json.dumps({"schemes": schemes, "modules": quant_modules}))
"""


def _python(code: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=PACKAGE_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_an_int6_artifact_reads_in_a_process_that_imports_only_the_reader(tmp_path):
    written = _python(WRITER, str(tmp_path))
    assert "intn_row" in written["int8"] and written["bits"].count("intn_row_packed") == 1
    read = _python(READER, str(tmp_path))
    assert read["schemes"] == written
    # Nothing but the reader's own imports ran: no quantizer module filled anything in.
    assert "paramgolf.quant.mixed" not in read["modules"]
    assert set(read["modules"]) <= set(import_closure(["paramgolf.quant.artifact"]))


def test_the_readers_code_bytes_include_every_dequantizer():
    from paramgolf.quant import schemes

    closure = set(import_closure(["paramgolf.quant.artifact"]))
    # The packed codes' unpacking (and the code range it checks) is counted too.
    assert {"paramgolf.quant.schemes", "paramgolf.quant.pack", "paramgolf.quant.intn"} <= closure
    for scheme in ("intn_row", "intn_row_packed", "int8_row", "int8_tensor", "fp16", "raw"):
        assert schemes.DEQUANTIZERS[scheme].__module__ in closure, scheme
    assert "paramgolf.quant.mixed" not in closure  # the reader needs no quantizer
