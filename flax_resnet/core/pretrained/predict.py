"""The top classes of image files for pretrained weights, in Flax, torch or both, from the same pixels.

The pixels are made once, by the weights' own eval transform; each framework's half (the
"pretrained" role of `core.frameworks`: `from_pretrained` and `logits`) is loaded by name, so
this module imports neither JAX nor torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from flax_resnet.core.files import PathError
from flax_resnet.core.frameworks import FRAMEWORKS, UnknownFramework, module
from flax_resnet.core.pretrained.catalog import find


def predict(images: Sequence[str], weights: str, frameworks: Sequence[str] = ("flax",), top: int = 5) -> dict[str, Any]:
    """{'weights', 'model', 'transform', 'images': [{'image', FRAMEWORK: [{'class', 'index',
    'probability'}, ...]}]}, the `top` classes per image, most probable first; with two
    frameworks also 'logits_relative_difference' (max |first - second| / max |second|).
    Raises InputError (one line) for a name, a download or an image that cannot be used."""
    if not frameworks:
        raise UnknownFramework(f"no framework given; choose from {', '.join(FRAMEWORKS)}")
    halves = {framework: module("pretrained", framework) for framework in frameworks}
    entry = find(weights)
    transform = entry.eval_transform()
    pixels = np.stack([_pixels(transform, path) for path in images])
    labels = entry.labels()
    logits = {framework: half.logits(half.from_pretrained(weights), pixels).astype(np.float64)
              for framework, half in halves.items()}
    rows = []
    for index, path in enumerate(images):
        row: dict[str, Any] = {"image": str(path)}
        for framework, values in logits.items():
            shifted = values[index] - values[index].max()
            probabilities = np.exp(shifted) / np.exp(shifted).sum()
            ranked = np.argsort(-values[index], kind="stable")[:top]
            row[framework] = [{"class": labels[k], "index": int(k), "probability": float(probabilities[k])}
                              for k in ranked]
        rows.append(row)
    report = {"weights": weights, "model": entry.model, "transform": transform.describe(), "images": rows}
    if len(logits) == 2:
        first, second = logits.values()
        report["logits_relative_difference"] = float(np.abs(first - second).max() / max(np.abs(second).max(), 1e-30))
    return report


def _pixels(transform, path) -> np.ndarray:
    try:
        return transform(path)
    except (OSError, ValueError) as error:  # missing, unreadable or not an image (PIL's UnidentifiedImageError)
        raise PathError(path, f"cannot read the image ({error})") from None


def report_lines(report: dict[str, Any]) -> list[str]:
    """Each image's classes, the frameworks side by side."""
    frameworks = [name for name in FRAMEWORKS if report["images"] and name in report["images"][0]]
    lines = [f"{report['weights']} ({report['model']}): {report['transform']}"]
    for row in report["images"]:
        lines.append(row["image"])
        lines.append("      " + "".join(f"{name:<41}" for name in frameworks).rstrip())
        for rank in range(len(row[frameworks[0]])):
            cells = [f"{row[name][rank]['class'][:30]:<30} {100 * row[name][rank]['probability']:6.2f}%   "
                     for name in frameworks]
            lines.append(f"  {rank + 1:>2}  " + "".join(cells).rstrip())
    if "logits_relative_difference" in report:
        lines.append(f"max |flax - torch| / max |torch| over the logits: {report['logits_relative_difference']:.1e}")
    return lines
