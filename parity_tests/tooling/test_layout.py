"""The package boundaries, as three rules:

1. `flax_resnet.core` is neutral: its files import neither JAX nor torch (nor any flax_resnet module
   outside the core, nor torch_ref), and importing every core module loads neither.
2. `torch_ref` is torch code: from flax_resnet it imports only the core, plus the JAX random
   draws its trainer shares so both frameworks see the same pixels and drop the same residual
   branches; it never loads Flax,
   and its models load no JAX at all.
3. The Flax side runs without torch: its models, trainer and studies never load torch or torch_ref;
   only porting and evaluation, which read torch's files and compare with the twin, may.

Checked by reading every module's import statements, and by importing the modules in a fresh
interpreter and looking at what got loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from parity_tests.helpers.scripts import REPO

JAX_ROOTS = ("jax", "jaxlib", "flax", "optax", "orbax")
TORCH_ROOTS = ("torch", "torchvision", "torch_ref")
# What torch_ref may take from flax_resnet besides the core: the pixels (and mixed targets) both
# trainers compute, so both frameworks train on the very same batches, and the stochastic-depth
# masks, so both drop the very same residual branches.
SHARED_PIXELS = ("flax_resnet.training.device_transforms", "flax_resnet.training.mixing",
                 "flax_resnet.training.stochastic_depth")
# The Flax packages that may use torch: they read torch's files and compare with the twin.
TORCH_READERS = ("flax_resnet.porting", "flax_resnet.evaluation")


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


def under(module: str, *roots: str) -> bool:
    return any(module == root or module.startswith(root + ".") for root in roots)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (REPO / folder).rglob("*.py"))


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def loaded_after(code: str) -> set[str]:
    """The top-level packages loaded in a fresh interpreter after running `code`."""
    return loaded_after_each(code)[0]


def loaded_after_each(*codes: str) -> list[set[str]]:
    """The top-level packages loaded after each piece of code, run in turn in one fresh interpreter."""
    report = "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    probe = "".join(code + report for code in codes)
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [set(json.loads(line)) for line in done.stdout.strip().splitlines()[-len(codes):]]


def import_all(paths: list[Path]) -> str:
    return "\n".join(f"import {module_name(path)}" for path in paths)


# --- rule 1: the core is neutral

@pytest.mark.parametrize("path", python_files("flax_resnet/core"), ids=relative)
def test_core_files_import_only_the_core(path):
    outside = {module for module in imported_modules(path)
               if under(module, *JAX_ROOTS, *TORCH_ROOTS)
               or (under(module, "flax_resnet") and not under(module, "flax_resnet.core") and module != "flax_resnet")}
    assert not outside, f"{relative(path)} imports {sorted(outside)}"


def test_importing_the_core_loads_neither_jax_nor_torch():
    loaded = loaded_after(import_all(python_files("flax_resnet/core")) + "\nimport flax_resnet, flax_resnet.training\n"
                          "flax_resnet.list_models()")
    assert not loaded & {*JAX_ROOTS, *TORCH_ROOTS}


# --- rule 2: torch_ref is torch code

@pytest.mark.parametrize("path", python_files("torch_ref"), ids=relative)
def test_torch_ref_takes_only_the_core_from_flax_resnet(path):
    taken = {module for module in imported_modules(path) if under(module, "flax_resnet", "flax")
             and not under(module, "flax_resnet.core", *SHARED_PIXELS)}
    assert not taken, f"{relative(path)} imports {sorted(taken)}"


def test_torch_ref_never_loads_flax_and_its_models_load_no_jax():
    # The models first, on the meta device: every model is built, no weight is drawn (the big ones
    # took 15 s); then every other torch_ref file, in the same interpreter.
    models, everything = loaded_after_each(
        "import torch, torch_ref\nwith torch.device('meta'):\n"
        "    for name in torch_ref.list_models(): torch_ref.create_model(name)",
        import_all(python_files("torch_ref")))
    assert "torch" in models and not models & set(JAX_ROOTS)
    assert "torch" in everything and not everything & {"flax", "optax", "orbax"}


# --- rule 3: the Flax side runs without torch

def flax_side() -> list[Path]:
    return [path for path in python_files("flax_resnet")
            if not under(module_name(path), "flax_resnet.core", *TORCH_READERS)]


@pytest.mark.parametrize("path", flax_side(), ids=relative)
def test_the_flax_side_imports_no_torch(path):
    taken = {module for module in imported_modules(path) if under(module, *TORCH_ROOTS)}
    assert not taken, f"{relative(path)} imports {sorted(taken)}"


def test_the_flax_side_loads_no_torch():
    loaded = loaded_after(import_all(flax_side()) + "\nfrom flax_resnet.porting import load_torch_state_dict")
    assert "flax" in loaded and not loaded & set(TORCH_ROOTS)


@pytest.mark.parametrize("path", python_files("scripts"), ids=relative)
def test_scripts_are_thin(path):
    """Scripts parse arguments and call the packages: no framework code of their own at the top."""
    top_level = {node.names[0].name for node in ast.parse(path.read_text()).body if isinstance(node, ast.Import)}
    assert not {name for name in top_level if under(name, *JAX_ROOTS, "torch", "torchvision")}, relative(path)
