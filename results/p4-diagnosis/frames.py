"""Where an efficient-capsnet-p4 run's test errors come from: for each misread test image,
the frame (quarter turn) in which the winning wrong class was longest, and the confusions.

    python frames.py RUN [--data-dir DIR] [--turn K]

``--turn K`` turns every test image K quarter turns counter-clockwise first (exactly, pixel
for pixel). Prints the accuracy, the accuracy of frame 0 alone, the frames each class is read
right in, the count of errors by the wrong class's frame, and the most common (true → read)
pairs with their frames."""

import argparse
import collections

import torch

from capsnet.nn.group import rotate
from capsnet.training.run import Run


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--data-dir")
    p.add_argument("--turn", type=int, default=0)
    args = p.parse_args()
    run = Run(args.run)
    model = run.load_model().eval()
    images, labels = run.test_set(data_dir=args.data_dir)
    images = rotate(images, args.turn)
    cfg, framed = model.config, model.classes
    with torch.no_grad():  # (N, F, K): each class's activation in each frame
        lengths = torch.cat([model(x.float() / 255).frame_scores for x in images.split(500)])
    scores, frame = lengths.max(1)  # (N, K)
    read = scores.argmax(1)
    wrong = (read != labels).nonzero().flatten()
    n, errors = len(labels), len(wrong)
    print(f"{args.run}, turned {args.turn}: {n - errors} of {n} right; errors {errors}")
    upright = (lengths[:, framed.frames.index(0)].argmax(1) == labels).sum()
    print(f"read in the upright frame 0 alone: {upright} of {len(labels)} right")
    right = (read == labels).nonzero().flatten().tolist()
    seen = collections.Counter((int(labels[i]), framed.frames[frame[i, read[i]]]) for i in right)
    for k in range(cfg.num_classes):  # where each class's upright digits are read
        print(f"class {k} read right in frames:", {r: seen[k, r] for r in framed.frames})
    by_frame = collections.Counter(framed.frames[frame[i, read[i]]] for i in wrong.tolist())
    print("errors by the frame of the class read:", dict(sorted(by_frame.items())))
    pairs = collections.Counter(
        (int(labels[i]), int(read[i]), framed.frames[frame[i, read[i]]]) for i in wrong.tolist()
    )
    print("most common (true, read, frame):", pairs.most_common(15))


if __name__ == "__main__":
    main()
