"""The package boundaries: the torch twin reads and runs without Flax, the Flax trainer without torch.

Checked twice: by reading every module's import statements (anywhere in the file), and by
importing the modules in a fresh interpreter and looking at what got loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def names_any(modules: set[str], *roots: str) -> bool:
    return any(module == root or module.startswith(root + ".") for module in modules for root in roots)


def library_files():
    for package in ("flax_resnet", "scripts"):
        yield from sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("path", list(library_files()), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_outside_the_torch_twin_imports_both_the_training_package_and_torch(path):
    modules = imported_modules(path)
    assert not (names_any(modules, "flax_resnet.training") and names_any(modules, "torch", "torch_ref")), (
        f"{path.relative_to(REPO)} imports flax_resnet.training and torch")


@pytest.mark.parametrize("path", sorted((REPO / "torch_ref").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_the_torch_twin_never_imports_flax(path):
    modules = imported_modules(path)
    assert not names_any(modules, "flax", "flax_resnet.models", "flax_resnet.porting", "flax_resnet.training.loop",
                         "flax_resnet.training.step", "flax_resnet.training.optim", "flax_resnet.training.run_checkpoints",
                         "flax_resnet.training.processes", "flax_resnet.studies.benchmark",
                         "flax_resnet.studies.gradient_flow")
    if "models" in path.parts:
        assert not names_any(modules, "jax", "flax_resnet.training", "flax_resnet.studies")


def loaded_after(code: str) -> set[str]:
    """The top-level packages loaded in a fresh interpreter after running `code`."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_torch_ref_models_build_without_jax():
    loaded = loaded_after("import torch_ref\nfor name in torch_ref.list_models(): torch_ref.create_model(name)")
    assert "torch" in loaded and not loaded & {"jax", "jaxlib", "flax", "optax", "orbax"}


def test_the_torch_trainer_loads_no_flax():
    loaded = loaded_after("import torch_ref.training.loop, torch_ref.studies.gradient_flow, torch_ref.studies.benchmark")
    assert "torch" in loaded and "flax" not in loaded and "orbax" not in loaded


def test_the_flax_trainer_loads_no_torch():
    loaded = loaded_after("import flax_resnet.training.loop, flax_resnet.studies.experiments, "
                          "flax_resnet.studies.gradient_flow, flax_resnet.studies.benchmark\n"
                          "import flax_resnet, flax_resnet.config, flax_resnet.trainer\n"
                          "from flax_resnet.porting import load_torch_state_dict, to_torch_state_dict")
    assert "flax" in loaded and not loaded & {"torch", "torch_ref", "torchvision"}


def test_the_plain_modules_import_without_jax_or_torch():
    loaded = loaded_after("import flax_resnet, flax_resnet.core.files, flax_resnet.core.config, "
                          "flax_resnet.core.plan, flax_resnet.core.data.sampling, "
                          "flax_resnet.core.initial_weights, flax_resnet.core.run.workdir, flax_resnet.core.timing, "
                          "flax_resnet.core.schedule, flax_resnet.core.run.progress, "
                          "flax_resnet.core.run.interrupts, flax_resnet.core.run.event_files, "
                          "flax_resnet.core.run.launcher, flax_resnet.core.run.init_from, flax_resnet.core.evaluation\n"
                          "flax_resnet.list_models()")
    assert not loaded & {"jax", "jaxlib", "flax", "optax", "orbax", "torch"}
