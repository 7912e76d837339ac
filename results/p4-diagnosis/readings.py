"""An efficient-capsnet-p4 run's accuracy under three readings of its class capsules, on its
validation images (the run's held-out split of the training set) and on the test set: each
class from its longest frame (the model's own), "upright first" (an image with a class
capsule of length ≥ 0.5 in frame 0 read from frame 0 alone, else as the model does), and
every image upright (frame 0 alone).

    python readings.py RUN [--data-dir DIR]
"""

import argparse

import torch

from capsnet.training.run import Run


def readings(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Accuracy (%) of the three readings."""
    with torch.no_grad():
        frames = torch.cat([model(x.float() / 255).frame_scores for x in images.split(500)])
    longest, upright = frames.amax(1), frames[:, model.config.frames.index(0)]  # (N, K)
    sure = upright.amax(1, keepdim=True) >= 0.5  # (N, 1): a class present upright
    reads = [longest, torch.where(sure, upright, longest), upright]
    return [100 * (r.argmax(1) == labels).float().mean().item() for r in reads]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--data-dir")
    args = p.parse_args()
    run = Run(args.run)
    val = run.task().load_train(val_size=run.train.val_size)
    test = run.test_set(data_dir=args.data_dir)
    model = run.load_model().eval()
    names = ("longest frame", "upright first (0.5)", "upright alone")
    on_val = readings(model, val.val_x, val.val_y)
    on_test = readings(model, *test)
    for name, v, t in zip(names, on_val, on_test, strict=True):
        print(f"{name:20s} validation {v:.2f}% ({len(val.val_y)}), test {t:.2f}% ({len(test[1])})")


if __name__ == "__main__":
    main()
