"""Write an IDX dataset (MNIST, Fashion-MNIST) as an image folder for ``--dataset folder:``.

    python scripts/idx_to_folder.py fashion-mnist OUT [--data-dir DIR]

gives OUT/train/<class>/<index>.png and OUT/test/<class>/<index>.png, one greyscale PNG per
image, class folders named after the dataset's class names ("/" becomes "-").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from capsnet.data import get_spec, load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["mnist", "fashion-mnist"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    names = [n.replace("/", "-") for n in get_spec(args.dataset).class_names]
    for split in ("train", "test"):
        images, labels = load_split(args.dataset, split, args.data_dir, download=False)
        for name in names:
            (args.out / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images[:, 0].numpy(), labels.tolist(), strict=True)):
            Image.fromarray(image).save(args.out / split / names[label] / f"{i:05d}.png")
        print(f"{split}: {len(labels)} images written to {args.out / split}")


if __name__ == "__main__":
    main()
