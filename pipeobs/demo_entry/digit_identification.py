"""Digit identification: an ordinary ParallelRunStep entry script (the pipeobs demo job).

In the spirit of Azure's ``digit_identification.py`` sample, with a small scikit-learn model in
place of the TensorFlow MNIST checkpoint. ``init()`` loads the pickled model from
``--model_dir``; ``run()`` scores each PNG of the mini-batch and returns ``"<file>: <digit>"``
lines, which the ``append_row`` output action writes to ``mnist_outputs.txt``.
"""

import argparse
import os
import pickle

import numpy as np
from PIL import Image

try:
    from azureml_user.parallel_run import EntryScript
except ImportError:  # outside the ParallelRunStep runtime
    EntryScript = None

model = None


def init():
    global model
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", required=True, help="folder holding digits.pkl")
    args, _ = parser.parse_known_args()  # the runtime passes its own arguments too
    model_path = os.path.join(args.model_dir, "digits.pkl")
    with open(model_path, "rb") as f:
        model = pickle.load(f)
    if EntryScript is not None:
        EntryScript().logger.info(f"init(): loaded model from {model_path}")
    print(f"init(): loaded {type(model).__name__} from {model_path}")


def _features(path):
    """A 28x28 grayscale PNG as load_digits' 64 features (8x8 pixels, ink 0..16)."""
    with Image.open(path) as image:
        small = image.convert("L").resize((8, 8), Image.Resampling.BILINEAR)
    pixels = np.asarray(small, dtype=np.float64)
    return (pixels * 16.0 / 255.0).reshape(1, -1)


def run(mini_batch):
    results = []
    for image_path in mini_batch:
        digit = int(model.predict(_features(image_path))[0])
        results.append(f"{os.path.basename(image_path)}: {digit}")
    print(f"scored {len(results)} images")
    return results
