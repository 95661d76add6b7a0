"""Pretrained weights by name: where each file is, what it holds, what it scored, how to feed it.

    torchvision:<model>.<TAG>        torchvision's weight enums (`torchvision_weights`, generated)
    akamaster:<model>.CIFAR10        akamaster/pytorch_resnet_cifar10's pretrained_models/
    hf-hub:<org>/<name>[@revision]   a timm or transformers repository (`hub` reads its config.json)

An `Entry` is plain data: the file's URL and sha256 (or the prefix its publisher puts in the name),
or a hub id; the registered variant it fits; its classes and parameter count; the published
top-1/top-5; and the `EvalTransform` it was evaluated with. A `Catalog` can point every URL at a
mirror (`base_url`) and take extra entries; `default_catalog()` reads both from the environment
(FLAX_RESNET_WEIGHTS_URL, and FLAX_RESNET_WEIGHTS_EXTRA naming a JSON list of entries).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flax_resnet.core.data.transforms import center_crop_box, decode_image, resize_shorter_side, to_mode
from flax_resnet.core.files import PathError, summarize
from flax_resnet.core.registry import MODELS, TIMM_MODELS, resolve

HUB_PREFIX = "hf-hub:"
BASE_URL_VARIABLE = "FLAX_RESNET_WEIGHTS_URL"
EXTRA_VARIABLE = "FLAX_RESNET_WEIGHTS_EXTRA"
IMAGENET_CLASSES_FILE = "imagenet_classes.txt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR-10's label order, as in its batches.meta (and torchvision's CIFAR10.classes).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}

# akamaster/pytorch_resnet_cifar10 (README.md, "Pretrained models for download"): the file names
# end in their sha256 prefix, the test errors are "this impl." on CIFAR-10's test set, and
# trainer.py evaluates with ToTensor() and ImageNet's mean and std, on the 32x32 images as they are.
AKAMASTER_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
AKAMASTER_FILES = {"resnet20": ("resnet20-12fca82f.th", 8.27), "resnet32": ("resnet32-d509ac18.th", 7.37),
                   "resnet44": ("resnet44-014dd654.th", 6.90), "resnet56": ("resnet56-4bfd9763.th", 6.61),
                   "resnet110": ("resnet110-1d1ed7c2.th", 6.32), "resnet1202": ("resnet1202-f3b1deed.th", 6.18)}
# The twin's parameter count of each (weights and biases; BatchNorm statistics are not parameters).
AKAMASTER_PARAMS = {"resnet20": 269722, "resnet32": 464154, "resnet44": 658586, "resnet56": 853018,
                    "resnet110": 1727962, "resnet1202": 19421274}
# The transformers ResNets microsoft publishes (ResNetForImageClassification, ImageNet-1k labels).
TRANSFORMERS_IDS = tuple(f"microsoft/resnet-{depth}" for depth in (18, 26, 34, 50, 101, 152))


class PretrainedError(PathError):
    """A pretrained name, download or kept file that cannot be used; the message names it (or its
    URL) and the problem. An InputError, as every expected failure is."""


# ---------------------------------------------------------------------------------------------
# The eval transform
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """Resize the shorter side to `resize_size` (PIL, antialiased), cut out the centre `crop_size`,
    scale to [0, 1] and normalize: torchvision's ImageClassification preset and timm's and
    transformers' eval transforms, which all differ only in these numbers. origin: where they are from."""

    resize_size: int
    crop_size: int
    interpolation: str  # 'bilinear' | 'bicubic'
    mean: tuple[float, ...]
    std: tuple[float, ...]
    origin: str = ""

    def __post_init__(self):
        if self.interpolation not in FILTERS:
            raise ValueError(f"interpolation {self.interpolation!r}; choose from {', '.join(FILTERS)}")
        if self.resize_size < self.crop_size:
            raise ValueError(f"resize {self.resize_size} is smaller than the crop {self.crop_size}")

    def pixels(self, image) -> np.ndarray:
        """uint8 HWC pixels of `image` (a path, encoded bytes, a PIL image or a uint8 array), resized and cropped."""
        image = image if isinstance(image, Image.Image) else decode_image(image)
        image = to_mode(image, len(self.mean))
        width, height = resize_shorter_side(image.width, image.height, self.resize_size)
        if (width, height) != image.size:
            image = image.resize((width, height), FILTERS[self.interpolation])
        top, left = center_crop_box(width, height, self.crop_size)
        pixels = np.asarray(image.crop((left, top, left + self.crop_size, top + self.crop_size)), np.uint8)
        return pixels[..., None] if pixels.ndim == 2 else pixels

    def __call__(self, image) -> np.ndarray:
        """float32 HWC: `pixels(image)` in [0, 1], normalized by mean and std."""
        unit = self.pixels(image).astype(np.float32) / np.float32(255)
        return ((unit - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(np.float32)

    @property
    def crop_pct(self) -> float:
        """crop / resize, the largest float whose int(crop / crop_pct) is still `resize_size`
        (evaluation resizes to floor(size / crop_pct), as timm does)."""
        crop_pct = self.crop_size / self.resize_size
        while int(self.crop_size / crop_pct) < self.resize_size:
            crop_pct = float(np.nextafter(crop_pct, 0.0))
        return crop_pct

    def preprocessing(self) -> dict[str, Any]:
        """The fields of porting's `Preprocessing` (how a source records what its weights expect)."""
        return {"mean": list(self.mean), "std": list(self.std), "input_size": self.crop_size,
                "crop_pct": self.crop_pct, "interpolation": self.interpolation, "origin": self.origin}

    def describe(self) -> str:
        """'Resize(232, bilinear) + CenterCrop(224), mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)'."""
        return (f"Resize({self.resize_size}, {self.interpolation}) + CenterCrop({self.crop_size}), "
                f"mean ({', '.join(f'{v:g}' for v in self.mean)}), std ({', '.join(f'{v:g}' for v in self.std)})")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> EvalTransform:
        return cls(int(values["resize_size"]), int(values["crop_size"]), values["interpolation"],
                   tuple(float(v) for v in values["mean"]), tuple(float(v) for v in values["std"]),
                   values.get("origin", ""))


# ---------------------------------------------------------------------------------------------
# Entries
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Entry:
    """One pretrained network. `url` and `sha256` for a file (sha256: the whole digest, or the
    prefix its publisher puts in the file name), or `hub_id` and `revision` for a hub repository.
    `model`, `num_classes`, `in_channels`: the registered variant it fits. `metrics`: as published,
    {'dataset', 'acc@1', 'acc@5'} in percent. `classes`: the class names, or the name of a
    shared list ('imagenet-1k', 'cifar-10'). `state_dict_key`: the entry of the saved dict that
    holds the weights. `default`: what `create_model(model, pretrained=True)` takes."""

    name: str
    model: str
    source: str
    tag: str | None = None
    url: str | None = None
    sha256: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    num_classes: int = 1000
    in_channels: int = 3
    num_params: int | None = None
    metrics: dict[str, Any] | None = None
    transform: EvalTransform | None = None
    classes: str | tuple[str, ...] = "imagenet-1k"
    state_dict_key: str | None = None
    default: bool = False
    reference: str = ""

    @property
    def file_name(self) -> str | None:
        return None if self.url is None else self.url.rsplit("/", 1)[-1]

    def labels(self) -> tuple[str, ...]:
        """The class names, index by index."""
        if isinstance(self.classes, tuple):
            return self.classes
        if self.classes == "imagenet-1k":
            return imagenet_classes()
        if self.classes == "cifar-10":
            return CIFAR10_CLASSES
        return tuple(f"class {i}" for i in range(self.num_classes))

    def eval_transform(self) -> EvalTransform:
        """The transform the weights were evaluated with; PretrainedError if none is recorded."""
        if self.transform is None:
            raise PretrainedError(self.name, "records no eval transform (its hub repository has no "
                                             "preprocessor_config.json)")
        return self.transform

    def check_arguments(self, num_classes: int | None, in_channels: int | None, options: Mapping[str, Any]) -> None:
        """PretrainedError unless `create_model(self.model, ...)` with these arguments is the
        network the weights are (arguments may repeat the weights' own, not change them)."""
        try:
            asked = resolve(self.model, num_classes, in_channels, dict(options))[1:]
        except ValueError as error:
            raise PretrainedError(self.name, str(error)) from None
        own = resolve(self.model, self.num_classes, self.in_channels, {})[1:]
        if asked != own:
            raise PretrainedError(self.name, f"are a {self.model} with {own[0]} classes, {own[1]} input channels "
                                             f"and options {own[2]}; to change that, fine-tune them "
                                             f"(scripts/train.py --init-from {self.name})")

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["transform"] = None if self.transform is None else self.transform.to_json()
        values["classes"] = list(self.classes) if isinstance(self.classes, tuple) else self.classes
        return values

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> Entry:
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown or "name" not in values or "model" not in values:
            raise ValueError(f"a catalog entry needs 'name' and 'model' and takes {', '.join(sorted(names))}"
                             + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        values = dict(values)
        source, _, rest = values["name"].partition(":")
        values.setdefault("source", source)
        if "." in rest and not rest.startswith(HUB_PREFIX):
            values.setdefault("tag", rest.rsplit(".", 1)[1])
        if values.get("transform") is not None:
            values["transform"] = EvalTransform.from_json(values["transform"])
        if isinstance(values.get("classes"), list):
            values["classes"] = tuple(values["classes"])
        return cls(**values)


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """ImageNet-1k's class names in index order (torchvision's weight enums' `categories`)."""
    text = (Path(__file__).with_name(IMAGENET_CLASSES_FILE)).read_text()
    return tuple(line for line in text.splitlines() if line)


def torchvision_entries() -> list[Entry]:
    """Every weight enum member of the registered torchvision variants (`torchvision_weights`)."""
    from flax_resnet.core.pretrained.torchvision_weights import TORCHVISION_VERSION, WEIGHTS

    entries = []
    for row in WEIGHTS:
        transform = EvalTransform(row["resize_size"], row["crop_size"], row["interpolation"], tuple(row["mean"]),
                                  tuple(row["std"]), f"torchvision's {row['model']} {row['tag']} weights")
        file_name = row["url"].rsplit("/", 1)[-1]
        entries.append(Entry(
            name=f"torchvision:{row['model']}.{row['tag']}", model=row["model"], source="torchvision",
            tag=row["tag"], url=row["url"], sha256=_hash_in_name(file_name), num_classes=row["num_classes"],
            num_params=row["num_params"],
            metrics={"dataset": "ImageNet-1K", "acc@1": row["acc@1"], "acc@5": row["acc@5"]},
            transform=transform, default=row["default"],
            reference=f"torchvision {TORCHVISION_VERSION} weight enum; recipe {row['recipe']}"))
    return entries


def akamaster_entries() -> list[Entry]:
    """akamaster's CIFAR-10 nets whose variant is registered."""
    entries = []
    for model, (file_name, error) in AKAMASTER_FILES.items():
        if model not in MODELS:
            continue  # resnet1202 joins the catalog when the registry has it
        transform = EvalTransform(32, 32, "bilinear", IMAGENET_MEAN, IMAGENET_STD,
                                  "akamaster/pytorch_resnet_cifar10's trainer.py")
        entries.append(Entry(
            name=f"akamaster:{model}.CIFAR10", model=model, source="akamaster", tag="CIFAR10",
            url=AKAMASTER_URL + file_name, sha256=_hash_in_name(file_name), num_classes=10,
            num_params=AKAMASTER_PARAMS[model],
            metrics={"dataset": "CIFAR-10", "acc@1": round(100 - error, 2), "acc@5": None},
            transform=transform, classes="cifar-10", state_dict_key="state_dict", default=True,
            reference="akamaster/pytorch_resnet_cifar10 README.md"))
    return entries


def _hash_in_name(file_name: str) -> str:
    """The sha256 prefix that torch.hub's convention puts after the last '-' of a file name."""
    return file_name.rsplit(".", 1)[0].rsplit("-", 1)[-1]


def timm_architectures() -> tuple[str, ...]:
    """The timm architectures whose hub weights the registry takes as they are."""
    return TIMM_MODELS


# ---------------------------------------------------------------------------------------------
# The catalog
# ---------------------------------------------------------------------------------------------

class Catalog:
    """The built-in entries, with every URL under `base_url` if given, plus `extra` entries
    (Entry objects or their JSON dicts). Hub ids resolve through `hub.hub_entry` when asked for."""

    def __init__(self, *, base_url: str | None = None, extra: Iterable[Entry | Mapping[str, Any]] = ()):
        entries = [*torchvision_entries(), *akamaster_entries()]
        if base_url:
            entries = [dataclasses.replace(entry, url=f"{base_url.rstrip('/')}/{entry.file_name}") for entry in entries]
        for item in extra:
            entry = item if isinstance(item, Entry) else Entry.from_json(item)
            if entry.model not in MODELS:
                raise ValueError(f"catalog entry {entry.name}: unknown model {entry.model!r}")
            entries.append(entry)
        self._entries = {entry.name: entry for entry in entries}

    @classmethod
    def from_environment(cls) -> Catalog:
        """The catalog with FLAX_RESNET_WEIGHTS_URL as base URL and FLAX_RESNET_WEIGHTS_EXTRA's entries."""
        extra = ()
        path = os.environ.get(EXTRA_VARIABLE)
        if path:
            try:
                extra = json.loads(Path(path).read_text())
            except (OSError, ValueError) as error:
                raise PretrainedError(path, f"unreadable catalog entries ({EXTRA_VARIABLE}): {error}") from None
        try:
            return cls(base_url=os.environ.get(BASE_URL_VARIABLE) or None, extra=extra)
        except (TypeError, ValueError) as error:
            raise PretrainedError(path or EXTRA_VARIABLE, str(error)) from None

    def static_entries(self) -> list[Entry]:
        """Every entry that needs no hub look-up, in catalog order."""
        return list(self._entries.values())

    def names(self) -> list[str]:
        """Every name this catalog answers to without a hub look-up, then the transformers ids."""
        return [*self._entries, *(HUB_PREFIX + hub_id for hub_id in TRANSFORMERS_IDS)]

    def is_name(self, text: str) -> bool:
        """True for text spelled as a catalog name (a known source prefix, or an extra entry's name)."""
        return text in self._entries or text.startswith(HUB_PREFIX) or (
            ":" in text and text.split(":", 1)[0] in {entry.source for entry in self._entries.values()})

    def find(self, name: str) -> Entry:
        """The entry called `name`; PretrainedError naming the valid ones, closest first."""
        if name in self._entries:
            return self._entries[name]
        if name.startswith(HUB_PREFIX):
            from flax_resnet.core.pretrained.hub import hub_entry

            return hub_entry(name)
        source, _, rest = name.partition(":")
        model, _, tag = rest.partition(".")
        same_model = [entry for entry in self._entries.values() if entry.source == source and entry.model == model]
        if same_model and tag:
            tags = _closest(tag, [entry.tag for entry in same_model])
            raise PretrainedError(name, f"unknown tag {tag!r} for {source}:{model}; valid: {', '.join(tags)}")
        candidates = [key for key, entry in self._entries.items() if entry.source == source] or self.names()
        raise PretrainedError(name, f"unknown pretrained name; valid names, closest first: "
                                    f"{summarize(_closest(name, candidates), 8)} (scripts/port_weights.py "
                                    f"--list-pretrained lists them all), or hf-hub:<org>/<repository>")

    def for_model(self, model: str, pretrained) -> Entry:
        """The entry `create_model(model, pretrained=...)` means: a tag of the model's own (True:
        its default), or a whole name, which must be weights of `model`."""
        if isinstance(pretrained, str) and self.is_name(pretrained):
            entry = self.find(pretrained)
        else:
            own = [entry for entry in self._entries.values() if entry.model == model]
            if not own:
                models = _closest(model, sorted({entry.model for entry in self._entries.values()}))
                raise PretrainedError(model, f"no pretrained weights in the catalog (models with some, closest "
                                             f"first: {', '.join(models)}; or pass an hf-hub: name)")
            if pretrained is True:
                defaults = [entry for entry in own if entry.default] or own
                entry = defaults[0]
            else:
                matches = [entry for entry in own if entry.tag == pretrained]
                if not matches:
                    tags = _closest(str(pretrained), [entry.tag for entry in own])
                    raise PretrainedError(model, f"unknown pretrained tag {pretrained!r}; valid: {', '.join(tags)}")
                entry = matches[0]
        if entry.model != model:
            raise PretrainedError(entry.name, f"holds a {entry.model}, not a {model}")
        return entry


def _closest(word: str, choices: Iterable[str]) -> list[str]:
    """`choices` ordered by similarity to `word` (difflib's ratio), most similar first."""
    choices = [choice for choice in dict.fromkeys(choices) if choice is not None]
    return sorted(choices, key=lambda choice: -difflib.SequenceMatcher(None, word.lower(), choice.lower()).ratio())


def default_catalog() -> Catalog:
    """The catalog as the environment configures it (read on each call: cheap, and tests change it)."""
    return Catalog.from_environment()


def find(name: str) -> Entry:
    """`default_catalog().find(name)`."""
    return default_catalog().find(name)


def listing_lines(catalog: Catalog | None = None) -> list[str]:
    """One line per name: name, variant, published top-1 (what `port_weights.py --list-pretrained` prints)."""
    catalog = catalog or default_catalog()
    lines = []
    for entry in catalog.static_entries():
        score = f"top-1 {entry.metrics['acc@1']:g}% on {entry.metrics['dataset']}" if entry.metrics else ""
        lines.append(f"{entry.name:<44} {entry.model:<18} {score}".rstrip())
    lines += [f"{HUB_PREFIX + hub_id:<44} its config.json says" for hub_id in TRANSFORMERS_IDS]
    lines.append(f"{HUB_PREFIX}timm/<architecture>.<tag> for architecture {', '.join(TIMM_MODELS)}")
    return lines


def published_lines(weights: str) -> list[str]:
    """['published: top-1 80.86%  top-5 95.43% on ImageNet-1K'] for a pretrained name whose entry
    records its scores, else [] (a path, a hub id, an unknown name: evaluation says what is wrong)."""
    if not is_pretrained_name(weights) or weights.startswith(HUB_PREFIX):
        return []
    try:
        metrics = default_catalog().find(weights).metrics
    except PretrainedError:
        return []
    if not metrics:
        return []
    scores = "  ".join(f"top-{k} {metrics[f'acc@{k}']:.2f}%" for k in (1, 5) if metrics.get(f"acc@{k}") is not None)
    return [f"published: {scores} on {metrics['dataset']}"]


def is_pretrained_name(text) -> bool:
    """True if `text` (a str) is spelled as a catalog name and is no existing path."""
    if not isinstance(text, str) or os.path.exists(text):
        return False
    try:
        return default_catalog().is_name(text)
    except PretrainedError:
        return ":" in text  # unreadable extra entries: looking the name up says so
