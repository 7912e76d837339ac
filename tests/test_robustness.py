"""Robustness perturbations: identity at strength 0, seeded, and what each one does."""

import json

import pytest
import torch

from capsnet.data.sources import load_split
from capsnet.errors import ConfigError
from capsnet.targets import OverlayTargets
from capsnet.tools.perturbations import PERTURBATIONS
from capsnet.tools.robustness import robustness_report, sweep


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def digits(mnist_dir) -> torch.Tensor:
    return load_split("mnist", "test", mnist_dir)[0][:16].float() / 255


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_every_perturbation_is_the_identity_at_zero(name, digits):
    assert 0 in PERTURBATIONS[name].strengths
    assert torch.equal(PERTURBATIONS[name].transform(digits, 0.0, gen()), digits)


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_every_perturbation_is_deterministic_by_seed_and_keeps_shape_and_range(name, digits):
    p = PERTURBATIONS[name]
    strength = float(max(p.strengths, key=abs))
    a, b = p.transform(digits, strength, gen(3)), p.transform(digits, strength, gen(3))
    assert torch.equal(a, b) and a.shape == digits.shape
    assert not torch.equal(a, digits) and a.min() >= 0 and a.max() <= 1


def test_rotation_by_90_degrees_is_a_quarter_turn(digits):
    r = PERTURBATIONS["rotation"].transform(digits[:1], 90.0, gen())
    errors = [(r[0] - torch.rot90(digits[0], k, (1, 2))).abs().max() for k in (1, 3)]
    assert min(errors) < 1e-5


def test_translation_moves_the_centre_of_mass_by_about_the_distance():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 13:15, 13:15] = 1  # a 2×2 dot at the centre, far from the edges
    y = PERTURBATIONS["translation"].transform(x, 5.0, gen())
    (rows, cols) = torch.nonzero(y[0, 0], as_tuple=True)
    distance = ((rows.double().mean() - 13.5) ** 2 + (cols.double().mean() - 13.5) ** 2).sqrt()
    assert distance == pytest.approx(5.0, abs=0.71)  # rounding to whole pixels: ≤ √2/2


def test_one_dilation_grows_a_dot_to_3x3_and_one_erosion_removes_it():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1
    bold = PERTURBATIONS["stroke"].transform(x, 1.0, gen())
    assert bold.sum() == 9 and torch.equal(bold[0, 0, 3:6, 3:6], torch.ones(3, 3))
    assert PERTURBATIONS["stroke"].transform(x, -1.0, gen()).sum() == 0


def test_blur_keeps_the_ink_of_a_centred_dot():
    x = torch.zeros(1, 1, 28, 28, dtype=torch.float64)
    x[0, 0, 14, 14] = 1
    y = PERTURBATIONS["blur"].transform(x, 2.0, gen())
    assert y.sum().item() == pytest.approx(1.0, abs=1e-9) and y[0, 0, 14, 14] < 0.05


def test_sweep_of_an_oracle_is_perfect_at_zero_and_names_are_checked(digits):
    labels = torch.arange(len(digits)) % 10
    oracle_scores = {id(digits): torch.nn.functional.one_hot(labels, 10).float()}

    def scores(x):  # right on the clean images, a constant guess on changed ones
        return oracle_scores.get(id(x), torch.zeros(len(x), 10))

    result = sweep(scores, digits, labels, names=["blur"])
    assert result["blur"]["strength"][0] == 0 and result["blur"]["accuracy"][0] == 1.0
    assert result["blur"]["accuracy"][1] == pytest.approx((labels == 0).double().mean().item())
    with pytest.raises(ConfigError, match="unknown perturbation spin"):
        sweep(scores, digits, labels, names=["spin"])


def test_an_overlay_counts_only_when_its_two_highest_scores_are_its_two_labels(digits):
    pairs = OverlayTargets(torch.tensor([[1, 2], [3, 4], [5, 6]]), torch.zeros(3, 2, 1, 28, 28))
    scores = torch.tensor(
        [
            [0, 9, 8, 0, 0, 0, 0, 0, 0, 0],  # 1 and 2 highest: right
            [0, 0, 0, 9, 0, 0, 0, 0, 8, 0],  # 3 and 8: wrong
            [0, 0, 0, 0, 0, 8, 9, 0, 0, 0],  # 6 and 5: right in either order
        ],
        dtype=torch.float,
    )
    result = sweep(lambda x: scores, digits[:3], pairs, names=["blur"])
    assert result["blur"]["accuracy"] == [2 / 3] * len(result["blur"]["strength"])


def test_report_writes_json_and_png_for_every_model(digits, tmp_path):
    class Scores(torch.nn.Module):  # the least a Classifier provides
        config = None

        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))

        def forward(self, x, y=None):
            return type("Out", (), {"scores": self.net(x)})()

        def loss(self, out, x, y):
            raise NotImplementedError

    labels = torch.arange(len(digits)) % 10
    report = robustness_report(
        {"a": Scores(), "b": Scores()}, digits, labels, tmp_path, names=["rotation", "elastic"]
    )
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert saved == report and set(saved["models"]) == {"a", "b"}
    assert len(saved["models"]["a"]["rotation"]["accuracy"]) == 7
    assert (tmp_path / "robustness.png").stat().st_size > 0
