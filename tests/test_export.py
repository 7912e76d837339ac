import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from capsnet import create_model, load_run
from capsnet.cli import main
from capsnet.data import load_split
from capsnet.models.checkpoint import save_checkpoint


def _session(path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert main(["-q", "export", str(tiny_run), "--onnx", str(path), "--check-images", "20"]) == 0
    return path


def test_export_states_the_difference_to_pytorch_for_both_files(tiny_run, tmp_path, capsys):
    path = tmp_path / "m.onnx"
    assert main(["export", str(tiny_run), "--onnx", str(path), "--check-images", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {path}; max abs difference to PyTorch: scores ")
    assert lines[1].startswith(f"wrote {tmp_path / 'm.decoder.onnx'}; max abs difference")
    assert "reconstructions" in lines[1]


def test_onnx_classifier_matches_pytorch_on_other_test_images_and_batch_sizes(
    tiny_run, exported, mnist_dir
):
    model, _ = load_run(tiny_run)
    x = load_split("mnist", "test", mnist_dir)[0][500:507].float() / 255  # batch of 7
    scores, poses, weights = _session(exported).run(None, {"images": x.numpy()})
    with torch.no_grad():
        out = model(x)
    for got, want in ((scores, out.scores), (poses, out.poses), (weights, out.coupling)):
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)


def test_onnx_decoder_decodes_any_pose_and_mask_like_pytorch(tiny_run, exported):
    model, config = load_run(tiny_run)
    poses = 0.3 * torch.randn(3, config.num_classes, config.class_dim)
    mask = torch.nn.functional.one_hot(torch.tensor([0, 4, 9]), config.num_classes).float()
    (recon,) = _session(exported.with_name("tiny.decoder.onnx")).run(
        None, {"poses": poses.numpy(), "mask": mask.numpy()}
    )
    with torch.no_grad():
        np.testing.assert_allclose(recon, model.decode(poses, mask).numpy(), atol=1e-5, rtol=0)


def test_onnx_file_carries_class_names_and_model_config(exported):
    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert json.loads(props["class_names"]) == [str(k) for k in range(10)]
    assert json.loads(props["config"])["primary_types"] == 4


@pytest.mark.parametrize("norm", ["peak", "levels", "autolevels"])
def test_every_input_norm_exports_and_matches_pytorch(tiny_run, tmp_path, norm):
    argv = ["-q", "export", str(tiny_run), "--onnx", str(tmp_path / "m.onnx")]
    assert main([*argv, "--model-option", f"input_norm={norm}", "--check-images", "20"]) == 0


def test_a_model_without_decoder_exports_the_classifier_only(mnist_dir, tmp_path, capsys):
    model = create_model("capsnet-small", conv1_channels=8, primary_types=2, reconstruction=False)
    save_checkpoint(tmp_path / "best.safetensors", model, "capsnet-small")
    argv = ["export", str(tmp_path), "--onnx", str(tmp_path / "c.onnx")]
    assert main([*argv, "--dataset", "mnist", "--data-dir", str(mnist_dir)]) == 0
    assert (tmp_path / "c.onnx").is_file() and not (tmp_path / "c.decoder.onnx").exists()
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_export_of_a_run_of_unknown_dataset_asks_for_one(tmp_path, capsys):
    model = create_model("capsnet-small", conv1_channels=8, primary_types=2)
    save_checkpoint(tmp_path / "best.safetensors", model, "capsnet-small")
    assert main(["export", str(tmp_path), "--onnx", str(tmp_path / "c.onnx")]) == 2
    assert "pass --dataset" in capsys.readouterr().err
    assert not (tmp_path / "c.onnx").exists()


def test_a_file_that_does_not_match_pytorch_is_not_written(tiny_run, tmp_path, monkeypatch, capsys):
    # any difference is too large
    monkeypatch.setattr(
        "capsnet.tools.export._tolerances", lambda m, i, expected: [-1.0] * len(expected)
    )
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "differs from PyTorch" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_operator_onnx_cannot_express_is_named_in_one_line_and_nothing_is_printed(
    tmp_path, capfd
):
    from torch import nn

    from capsnet.errors import ConfigError
    from capsnet.tools.export import _export_quietly

    class Expm1(nn.Module):
        def forward(self, x):
            return torch.expm1(x)  # no ONNX symbolic at opset 17

    path = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match=r"cannot express the operator aten::expm1") as e:
        _export_quietly(Expm1(), {"x": torch.rand(3, 2)}, ("y",), path, path)
    assert "\n" not in str(e.value)
    assert capfd.readouterr() == ("", "")


@pytest.fixture
def shipped_elsewhere(tmp_path, monkeypatch):
    """A run directory of a tiny CapsNet trained on MNIST, on a machine with no MNIST on disk
    (no $CAPSNET_DATA, an empty home and system data directory)."""
    monkeypatch.delenv("CAPSNET_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr("capsnet.data.sources.SYSTEM_DATA_DIR", tmp_path / "datasets")
    run = tmp_path / "run"
    run.mkdir()
    model = create_model("capsnet-small", conv1_channels=4, primary_types=2, decoder_hidden=(8,))
    save_checkpoint(run / "best.safetensors", model, "capsnet-small")
    train = {"dataset": "mnist", "data_dir": None, "model": "capsnet-small"}
    (run / "config.json").write_text(json.dumps({"train": train}))
    return run


def test_a_run_without_its_test_set_on_disk_is_checked_on_random_images(
    shipped_elsewhere, tmp_path, caplog
):
    path = tmp_path / "m.onnx"
    with caplog.at_level("INFO", "capsnet"):
        assert main(["export", str(shipped_elsewhere), "--onnx", str(path)]) == 0
    assert path.is_file() and (tmp_path / "m.decoder.onnx").is_file()
    assert "no mnist test images on disk" in caplog.text
    assert "checking against PyTorch on 32 synthetic images instead" in caplog.text


def test_check_images_0_checks_on_random_images_only(shipped_elsewhere, tmp_path, caplog):
    path = tmp_path / "m.onnx"
    with caplog.at_level("INFO", "capsnet"):
        assert (
            main(["export", str(shipped_elsewhere), "--onnx", str(path), "--check-images", "0"])
            == 0
        )
    assert path.is_file()
    assert [r.getMessage() for r in caplog.records if "checking" in r.getMessage()] == [
        "checking against PyTorch on 32 synthetic images"
    ]


def test_a_data_dir_given_without_the_test_set_is_an_error(shipped_elsewhere, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["export", str(shipped_elsewhere), "--onnx", str(tmp_path / "m.onnx")]
    assert main([*argv, "--data-dir", str(tmp_path / "empty")]) == 2
    assert "capsnet: error:" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
