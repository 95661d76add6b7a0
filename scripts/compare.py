"""Train several models under identical settings and compare them: `python scripts/compare.py --preset NAME`.

Writes summary.json, summary.md, comparison.png, grad_norms.json and grad_norms.png into --workdir,
and each model's own run into --workdir/<model>. Every training option of scripts/train.py applies
to all the models; --recipe starts from one of its presets (e.g. he2015_cifar).

Examples:
    python scripts/compare.py --preset degradation --workdir runs/degradation
    python scripts/compare.py --models resnet20,plain20 --epochs 2 --framework torch
    python scripts/compare.py --preset degradation --recipe he2015_cifar --workdir runs/degradation-cifar10
    python scripts/compare.py --preset blocks --dataset cifar10 --epochs 100 --workdir runs/blocks-cifar10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from flax_resnet.core.config import PRESETS, ConfigError, OneLineErrorParser, add_train_arguments  # noqa: E402
from flax_resnet.studies.experiments import EXPERIMENTS, comparison_configs  # noqa: E402

OWN_OPTIONS = ("models", "experiment", "recipe")


def build_parser() -> OneLineErrorParser:
    # 'resolve': this script's --preset (a comparison) replaces train.py's (a recipe, here --recipe).
    parser = OneLineErrorParser(description=__doc__.splitlines()[0], conflict_handler="resolve")
    add_train_arguments(parser)
    presets = "; ".join(f"{name}: {', '.join(e.models)}" for name, e in EXPERIMENTS.items())
    parser.add_argument("--preset", dest="experiment", choices=list(EXPERIMENTS),
                        help=f"a comparison ({presets})")
    # train.py's --model, hidden: given anyway, it is refused with a pointer to --models.
    parser.add_argument("--model", dest="model", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--models", metavar="NAME,NAME,...",
                        help="the models to compare (instead of, or with, a --preset's settings)")
    parser.add_argument("--recipe", choices=list(PRESETS),
                        help="start every model from this training preset of scripts/train.py (its "
                             "dataset and settings, not its model); the other flags override it")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    own = {key: args.pop(key, None) for key in OWN_OPTIONS}
    models = [name.strip() for name in own["models"].split(",")] if own["models"] else None
    try:
        root, configs = comparison_configs(models, args, experiment=own["experiment"], recipe=own["recipe"])
    except ConfigError as error:
        parser.error(str(error))

    # Imported after the arguments are checked: JAX and torch take seconds to load.
    from flax_resnet.core.data import DataError
    from flax_resnet.core.run.workdir import TrainingDiverged
    from flax_resnet.studies.experiments import compare

    first = next(iter(configs.values()))
    title = f"{own['experiment'] or 'comparison'} on {first.dataset} ({first.framework})"
    try:
        compare(configs, root, title=title)
    except (ConfigError, DataError) as error:
        parser.error(str(error))
    except TrainingDiverged as error:
        print(f"{parser.prog}: {error}; the models finished before it are in {root / 'summary.json'}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; finished models are in {root / 'summary.json'}, and re-running "
              f"with the same --workdir resumes", file=sys.stderr)
        return 130
    print(f"comparison written to {root}: summary.md, comparison.png, grad_norms.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
