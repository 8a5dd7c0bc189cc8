"""``pipeobs demo``: the digit-identification job, built through the public API as a user would.

In the spirit of Azure's ``digit_identification.py`` sample (MachineLearningNotebooks,
``parallel-run``): 28x28 grayscale digit PNGs are scored by an entry script that loads a model
in ``init()`` and returns ``"<file>: <digit>"`` lines, collected with ``append_row`` into
``mnist_outputs.txt``. The images and the model come from scikit-learn's ``load_digits`` (8x8
images scaled up), so the demo needs no download and no TensorFlow.

scikit-learn and pillow are imported inside the functions: ``pip install 'pipeobs[demo]'``.
"""

from __future__ import annotations

import pickle
import re
import shlex
from pathlib import Path
from typing import Any

from pipeobs.errors import ConfigError, PipeobsError

ENTRY_SCRIPT = Path(__file__).resolve().parent / "demo_entry" / "digit_identification.py"
OUTPUT_FILE_NAME = "mnist_outputs.txt"
IMAGE_SIZE = 28
_MISSING = "the demo needs scikit-learn and pillow: pip install 'pipeobs[demo]'"
_LINE = re.compile(r"^digit_\d+_(\d)\.png: (\d+)$")


def _digits() -> Any:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise PipeobsError(_MISSING) from exc
    return load_digits()


def _image_module() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise PipeobsError(_MISSING) from exc
    return Image


def make_images(folder: Path, count: int) -> list[Path]:
    """Write ``count`` 28x28 grayscale PNGs of load_digits into ``folder/images`` (deterministic).

    Image *i* is ``digit_<i>_<true label>.png``; files that already exist are not rewritten.
    """
    digits = _digits()
    total = len(digits.images)
    if count < 1 or count > total:
        raise ConfigError(f"--images must be between 1 and {total}, got {count}")
    image_module = _image_module()
    images_dir = Path(folder) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = images_dir / f"digit_{index}_{int(digits.target[index])}.png"
        if not path.exists():
            pixels = (digits.images[index] * (255.0 / 16.0)).round().clip(0, 255).astype("uint8")
            small = image_module.fromarray(pixels, mode="L")
            small.resize((IMAGE_SIZE, IMAGE_SIZE), image_module.Resampling.BILINEAR).save(path)
        paths.append(path)
    return paths


def train_model(folder: Path) -> Path:
    """Fit a small classifier on load_digits and pickle it to ``folder/model/digits.pkl``."""
    digits = _digits()
    from sklearn.svm import SVC

    model = SVC(gamma=0.001, C=10.0)
    model.fit(digits.data, digits.target)
    model_dir = Path(folder) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "digits.pkl"
    with open(path, "wb") as f:
        pickle.dump(model, f)
    return path


def accuracy(output_file: Path) -> tuple[int, int]:
    """(correct, scored) from ``"<file>: <digit>"`` lines; the true label is in the file name."""
    correct = scored = 0
    for line in Path(output_file).read_text().splitlines():
        match = _LINE.match(line.strip())
        if match:
            scored += 1
            correct += match.group(1) == match.group(2)
    return correct, scored


def run_demo(folder: Path, images: int = 200) -> int:
    """Build the images and the model, run the job, print the summary; 0 if it completed, else 42."""
    from pipeobs.config import ParallelRunConfig
    from pipeobs.datasets import FileDataset
    from pipeobs.step import ParallelRunStep
    from pipeobs.summary import Progress, print_result

    folder = Path(folder).resolve()
    make_images(folder, images)
    model_dir = train_model(folder).parent
    images_dir = folder / "images"

    config = ParallelRunConfig(
        entry_script=str(ENTRY_SCRIPT),
        error_threshold=10,
        output_action="append_row",
        append_row_file_name=OUTPUT_FILE_NAME,
        node_count=1,
        process_count_per_node=2,
        mini_batch_size="5",
    )
    step = ParallelRunStep(
        "predict-digits-mnist",
        config,
        [FileDataset.from_files(str(images_dir))],
        output=str(folder / "output"),
        arguments=["--model_dir", str(model_dir)],
        allow_reuse=False,  # the demo shows a run each time, not a reuse of the last one
    )
    with Progress() as progress:
        result = step.run(folder / "runs", on_progress=progress.update)
    print_result(result)

    output_file = Path(result.output_path) if result.output_path else folder / "output" / OUTPUT_FILE_NAME
    if output_file.is_file():
        correct, scored = accuracy(output_file)
        if scored:
            print(f"accuracy: {correct}/{scored} = {correct / scored:.1%}")
    print(f"output:     {output_file}")
    print(f"driver log: {result.run_dir}/azureml-logs/70_driver_log.txt")
    print(f"all logs:   {result.run_dir}/logs/")
    command = [
        "pipeobs", "run", str(ENTRY_SCRIPT), "--input", str(images_dir),
        "--output-action", "append_row", "--append-row-file-name", OUTPUT_FILE_NAME,
        "--mini-batch-size", "5", "--process-count-per-node", "2", "--error-threshold", "10",
        "--", "--model_dir", str(model_dir),
    ]
    print("the same job from the command line:")
    print("  " + shlex.join(command))
    print("explore this run:")
    for explore in (["show"], ["logs"], ["trace"]):
        print("  " + shlex.join(["pipeobs", *explore, str(result.run_dir)]))
    print("  " + shlex.join(["pipeobs", "runs", str(folder / "runs")]) + "   (every run of the demo)")
    return 0 if result.ok else 42
