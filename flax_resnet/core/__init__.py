"""The framework-neutral core both frameworks stand on: plain Python, numpy and PIL.

Importing any module here imports neither JAX nor torch (`parity_tests/tooling/test_layout.py`).

    registry.py         the one list of variants and their options
    files.py            atomic writes, checksums, and PathError: the one error family of bad input
    config.py           every training setting, the presets, the command line
    plan.py             what a config means for a dataset: steps, augmentation, model arguments
    augment.py          the augmentation spec
    schedule.py         learning rate and momentum per optimizer update, as torch's schedulers
    initial_weights.py  the weights both trainers start from, drawn in numpy
    layouts.py          the key spellings people's weight files use, as tables of name rules
    pretrained/         the weights catalog: pretrained names, their files, scores and eval transforms
    data/               datasets by name, sampling, host transforms, the streaming loader
    run/                the run skeleton both trainers share, and the run folder it writes
    frameworks.py       each framework's half of a role, loaded by name
    evaluation.py       evaluating weights on a dataset, in either framework or both
    timing.py           the benchmark's neutral half
"""
