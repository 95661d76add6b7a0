"""The command line, generated from the settings: one flag per TrainConfig field, its help the
field's own, grouped as the fields are; the model options' flags, shared by every script."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from flax_resnet.core.config.presets import PRESET_SUMMARIES, PRESETS
from flax_resnet.core.config.settings import BOOLEAN, ConfigError, TrainConfig
from flax_resnet.core.config.validation import validate
from flax_resnet.core.registry import OPTION_CHOICES

PRESET_HELP = ("start from a recipe (flags override it): "
               + "; ".join(f"{name}: {summary}" for name, summary in PRESET_SUMMARIES.items()))
MODEL_OPTION_HELP = {
    "stem": "model option: stem of the ImageNet-style nets",
    "maxpool": "model option: max-pool after the stem (--maxpool, --no-maxpool or --maxpool true|false)",
    "zero_init_residual": "model option: zero-init each block's last BN weight",
    "shortcut": "model option: CIFAR nets' shortcut (A: zero-pad, B: projection)",
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def bool_word(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _Switch(argparse.Action):
    """--name, --no-name, or --name true|false."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no-") if values is None else values)


def add_switch(group, name: str, help_text: str, **kwargs) -> None:
    group.add_argument(flag(name), "--no-" + name.replace("_", "-"), dest=name, action=_Switch, nargs="?",
                       type=bool_word, metavar="{true,false}", help=help_text, **kwargs)


def add_model_options(parser, *, names=tuple(MODEL_OPTION_HELP), default=None, help=None,
                      words: bool = True) -> None:
    """The create_model options as flags (--stem, --maxpool, ...); `model_options(args)` reads them back.

    `words`: a yes/no option also takes true|false after it (--maxpool false); off for a parser
    with positional arguments, which the word would swallow (then --maxpool / --no-maxpool).
    """
    help = help or {}
    for name in names:
        text = help.get(name, MODEL_OPTION_HELP[name])
        if name in OPTION_CHOICES and not isinstance(OPTION_CHOICES[name][0], bool):
            parser.add_argument(flag(name), dest=name, default=default, choices=OPTION_CHOICES[name], help=text)
        elif words:
            add_switch(parser, name, text, default=default)
        else:
            parser.add_argument(flag(name), dest=name, default=default, action=argparse.BooleanOptionalAction,
                                help=text)


def model_options(args: argparse.Namespace) -> dict:
    """The model options a parsed command line gives (those not given are left out)."""
    given = vars(args)
    return {name: given[name] for name in MODEL_OPTION_HELP if given.get(name) is not None}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every TrainConfig setting (and --preset) to `parser`.

    Options the user does not give are left out of the parsed namespace, so `config_from_args`
    can tell a preset's value from an explicit one.
    """
    parser.add_argument("--preset", default=argparse.SUPPRESS, choices=list(PRESETS), help=PRESET_HELP)
    groups = {}
    for field in dataclasses.fields(TrainConfig):
        group_name = field.metadata["group"]
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        group = groups[group_name]
        if field.name == "model_options":
            add_model_options(group, default=argparse.SUPPRESS)
            continue
        default = field.default if field.default is not dataclasses.MISSING else None
        shown = f" (default: {default})" if default not in (None, {}) else ""
        kwargs = dict(field.metadata["flag"])
        if kwargs.pop("kind", None) == BOOLEAN:
            group.add_argument(flag(field.name), dest=field.name, default=argparse.SUPPRESS,
                               action=argparse.BooleanOptionalAction, help=field.metadata["help"] + shown)
        else:
            group.add_argument(flag(field.name), dest=field.name, default=argparse.SUPPRESS,
                               help=field.metadata["help"] + shown, **kwargs)


# Flags that act only beside another setting: (what they need, whether the settings give it).
# Given without it on the command line they are refused, rather than ignored.
NEEDS: dict[str, tuple[str, Callable[[TrainConfig], bool]]] = {
    "ra_reps": ("--ra-sampler", lambda c: c.ra_sampler),
    "model_ema_steps": ("--model-ema", lambda c: c.model_ema),
    "model_ema_decay": ("--model-ema", lambda c: c.model_ema),
    "mixup_mode": ("--mixup-alpha or --cutmix-alpha", lambda c: c.mixing),
    "warmup_start": ("--warmup-epochs", lambda c: c.warmup_epochs > 0),
    "milestones": ("--schedule multistep", lambda c: c.schedule == "multistep"),
    "gamma": ("--schedule multistep", lambda c: c.schedule == "multistep"),
}


def refuse_ignored_flags(config: TrainConfig, given: Mapping[str, Any]) -> None:
    """A ConfigError for the first setting in `given` (not None) that `config` would ignore (see NEEDS)."""
    for name, (needed, applies) in NEEDS.items():
        if given.get(name) is not None and not applies(config):
            raise ConfigError(f"{flag(name)} acts only with {needed}, which these settings do not have")


def config_from_args(args: argparse.Namespace, *, user_given: Mapping[str, Any] | None = None) -> TrainConfig:
    """The TrainConfig a parsed command line asks for: preset first, then explicit flags. Validated.

    user_given: the settings among `args` that the user named (default: all of them); those that
    the other settings would ignore are refused (`refuse_ignored_flags`).
    """
    given = vars(args)
    preset = given.get("preset", "default")
    values = dict(PRESETS[preset])
    options = {**values.pop("model_options", {}), **model_options(args)}
    for field in dataclasses.fields(TrainConfig):
        if field.name in given:
            value = given[field.name]
            values[field.name] = tuple(value) if isinstance(value, list) else value
    if values.get("init_from") is not None and "model" not in given and "model" not in PRESETS[preset]:
        values["model"] = None  # the variant of the weights it starts from
    config = TrainConfig(**values, model_options=options)
    validate(config)
    refuse_ignored_flags(config, given if user_given is None else user_given)
    return config


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
