"""The robustness sweep of a shipped MNIST model with input_norm="peak" (each image divided by
its brightest pixel inside the model), on the report's 2,000 images, seed 0.

    python sweep.py OUT.json MODEL [MODEL ...]
"""
import sys
from functools import partial
from pathlib import Path

from capsnet import load_pretrained
from capsnet.data.tasks import load_test
from capsnet.files import write_json
from capsnet.tools.predict import predict
from capsnet.tools.robustness import sweep

x, y = load_test("mnist", "/work/shared/data", limit=2000)
x = x.float() / 255
out = {}
for name in sys.argv[2:]:
    m, _ = load_pretrained(name)
    object.__setattr__(m.config, "input_norm", "peak")
    out[name + " (input_norm=peak)"] = sweep(partial(predict, m, batch_size=500), x, y, seed=0)
    print(name, "done", flush=True)
    write_json(Path(sys.argv[1]), {"test_examples": 2000, "seed": 0, "models": out})
