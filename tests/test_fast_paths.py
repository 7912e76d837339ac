"""capsnet's fast paths against the plain implementation in benchmarks/plain.py."""

import csv
import json

import pytest
import torch
from benchmarks.plain import PlainCapsNet

from capsnet import AffCapsNet, AffCapsNetConfig, CapsNet, CapsNetConfig
from capsnet.cli import main
from capsnet.tools.bench import CSV_FIELDS, append_csv

CFG = CapsNetConfig(conv1_channels=16, primary_types=8, decoder_hidden=(32, 64))


def _outputs_and_grads(model: torch.nn.Module, net: CapsNet, x, y):
    net.zero_grad()
    out = model(x, y)
    loss, _ = net.loss(out, x, y)
    loss.backward()
    return out, {n: p.grad.clone() for n, p in net.named_parameters()}


AFF = AffCapsNetConfig(conv1_channels=16, primary_types=8, decoder_hidden=(32, 64))
NETS = {
    "capsnet": lambda: CapsNet(CFG),
    "aff-capsnet": lambda: AffCapsNet(AFF),
    "aff-capsnet-type-3": lambda: AffCapsNet(
        AffCapsNetConfig(**{**AFF.to_dict(), "share": "type", "routing_iterations": 3})
    ),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_fast_and_plain_paths_agree_in_fp32(name):
    net = NETS[name]()
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6)
    fast, g_fast = _outputs_and_grads(net, net, x, y)
    plain, g_plain = _outputs_and_grads(PlainCapsNet(net), net, x, y)
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for name in g_fast:
        torch.testing.assert_close(g_fast[name], g_plain[name], atol=1e-5, rtol=1e-4)


def test_bf16_autocast_stays_close_to_fp32():
    # Tolerance: bf16 keeps 8 bits of mantissa (relative error ~4e-3 per op); the
    # convolutions run in bf16, routing accumulates in fp32. Lengths agree to 0.03.
    net = CapsNet(CFG).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        ref = net(x).scores
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x).scores
    assert low.dtype == torch.float32 or low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=3e-2, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_bench_json_has_the_fields(precision, capsys):
    argv = ["bench", "--model", "capsnet-small", "--batch-size", "4", "--steps", "1"]
    assert main([*argv, "--warmup", "0", "--precision", precision, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("train_images_per_second", "infer_images_per_second", "peak_memory_mb"):
        assert r[key] > 0, key
    assert r["precision"] == precision and r["device"] == "cpu" and r["torch_version"]


def test_bench_csv_gains_new_columns_and_keeps_old_rows(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("date,model,train_images_per_second\n2026-01-01,capsnet-mnist,50.0\n")
    append_csv(path, {"date": "2026-01-02", "model": "capsnet-small", "cpu_features": "AVX2"})
    append_csv(path, {"date": "2026-01-03", "model": "capsnet-small", "cpu_features": "AVX2"})
    with path.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_FIELDS
    assert [r["date"] for r in rows] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert rows[0]["train_images_per_second"] == "50.0" and rows[0]["cpu_features"] == ""
    assert rows[2]["cpu_features"] == "AVX2"


def test_bench_csv_with_only_an_old_header_gets_the_new_one(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("date,model\n")
    append_csv(path, {"date": "2026-01-02", "model": "capsnet-small"})
    with path.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_FIELDS and rows[0]["model"] == "capsnet-small"
