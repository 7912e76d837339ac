"""MultiMNIST generation: shapes, labels, partners, shifts, overlay, determinism."""

import numpy as np
import pytest
import torch

from capsnet.cli import main
from capsnet.data.multimnist import MultiMNISTConfig, fixed_pairs, make_pairs, overlay, partners


def dot_digits(labels: list[int], size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """One bright pixel per 'digit', at the centre: its position tells the shift."""
    x = torch.zeros(len(labels), 1, size, size, dtype=torch.uint8)
    x[:, 0, size // 2, size // 2] = 255
    return x, torch.tensor(labels)


def test_shapes_dtypes_and_two_distinct_labels():
    x, y = dot_digits([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 3)
    images, t = make_pairs(x, y, torch.arange(30), MultiMNISTConfig(), torch.Generator())
    assert images.shape == (30, 1, 36, 36) and images.dtype == torch.uint8
    assert t.labels.shape == (30, 2) and t.labels.dtype == torch.int64
    assert t.images.shape == (30, 2, 1, 36, 36) and t.images.dtype == torch.uint8
    assert (t.labels[:, 0] == y).all() and (t.labels[:, 0] != t.labels[:, 1]).all()
    assert torch.equal(images, overlay(t.images[:, 0], t.images[:, 1]))


def test_partner_is_uniform_over_the_images_of_other_classes():
    labels = torch.tensor([0, 0, 0, 1, 2])  # class 0 has 3 images, 1 and 2 one each
    gen = torch.Generator().manual_seed(0)
    second = partners(labels, torch.zeros(20000, dtype=torch.long), gen)
    counts = torch.bincount(second, minlength=5) / 20000
    torch.testing.assert_close(counts, torch.tensor([0, 0, 0, 0.5, 0.5]), atol=0.02, rtol=0)
    second = partners(labels, torch.full((20000,), 3), gen)
    counts = torch.bincount(second, minlength=5) / 20000
    torch.testing.assert_close(counts, torch.tensor([0.25, 0.25, 0.25, 0, 0.25]), atol=0.02, rtol=0)


def test_each_digit_is_shifted_within_bounds_and_every_shift_occurs():
    x, y = dot_digits([0, 1] * 500)
    cfg = MultiMNISTConfig(pad=4, shift=3)
    _, t = make_pairs(x, y, torch.arange(1000), cfg, torch.Generator().manual_seed(1))
    flat = t.images[:, :, 0].flatten(2).float().argmax(2)  # (N, 2) position of each dot
    rows, cols = flat // 36 - (4 + 14), flat % 36 - (4 + 14)  # offset from the unshifted dot
    for offsets in (rows, cols):
        assert offsets.min() == -3 and offsets.max() == 3
        assert len(offsets.unique()) == 7


def test_overlay_is_the_clipped_sum():
    a = torch.tensor([0, 10, 200, 255], dtype=torch.uint8)
    b = torch.tensor([0, 20, 100, 255], dtype=torch.uint8)
    assert overlay(a, b).tolist() == [0, 30, 255, 255]


def test_fixed_sets_are_determined_by_the_seed():
    x = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    y = torch.arange(40) % 10
    cfg = MultiMNISTConfig()
    a, ta = fixed_pairs(x, y, 3, cfg, seed=5)
    b, tb = fixed_pairs(x, y, 3, cfg, seed=5)
    c, _ = fixed_pairs(x, y, 3, cfg, seed=6)
    assert len(a) == 120 and torch.equal(a, b) and torch.equal(ta.labels, tb.labels)
    assert not torch.equal(a, c)


def test_make_writes_an_npz_set(mnist_dir, tmp_path, capsys):
    out = tmp_path / "set.npz"
    argv = ["multimnist", "make", "--out", str(out), "--data-dir", str(mnist_dir)]
    assert main([*argv, "--limit", "50", "--pairs-per-digit", "2"]) == 0
    with np.load(out) as f:
        assert f["images"].shape == (100, 36, 36) and f["images"].dtype == np.uint8
        assert f["labels"].shape == (100, 2) and (f["labels"][:, 0] != f["labels"][:, 1]).all()
        assert f["sources"].shape == (100, 2, 36, 36)
        np.testing.assert_array_equal(f["images"], np.minimum(f["sources"].astype(int).sum(1), 255))
    assert main(argv) == 2  # never overwritten unasked
    assert "exists" in capsys.readouterr().err


def test_bad_config_is_an_error():
    from capsnet.errors import ConfigError

    with pytest.raises(ConfigError, match="pad and shift"):
        MultiMNISTConfig(shift=-1)
