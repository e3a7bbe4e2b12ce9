"""The project's import graph has no cycle, and the data readers import no simulator until a conversion needs one."""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

# Every installed package root, found where the install puts it (envs/, data/ and configs/ of the checkout are
# mapped into drift_policy by pyproject.toml's package-dir).
ROOTS = ["drift_policy", "drift_policy.envs", "drift_policy.demos", "drift_policy.configs", "image_gen"]
SIMULATORS = ["robosuite", "mujoco", "gymnasium_robotics", "gym_pusht", "pymunk"]


def project_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the project's packages."""
    modules = {}
    for root in ROOTS:
        folder = Path(importlib.util.find_spec(root).submodule_search_locations[0])
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            modules[".".join([root, *parts[:-1]] + ([] if parts[-1] == "__init__" else [parts[-1]]))] = path
    return modules


def internal(name: str, modules: dict[str, Path]) -> str | None:
    """The project module `name` imports: the longest prefix of it that is one, or None for other packages."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `module` imports anywhere in its body (top level and inside functions alike);
    `from package import name` counts as importing package.name when that is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(internal(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.add(name if name in modules else internal(base, modules))
    return found - {None, module}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles of the graph as [a, b, ..., a], one per back edge of a depth-first search: empty exactly when it has none."""
    state, stack, cycles = {}, [], []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        state[node] = "done"
        stack.pop()

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_graph_sees_mapped_packages_and_submodule_imports():
    modules = project_modules()
    assert {"drift_policy.envs.runner", "drift_policy.demos.generate", "drift_policy.configs", "image_gen.models.generator"} <= set(modules)
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    assert {"drift_policy.configs", "drift_policy.demos"} <= graph["drift_policy.tasks"]  # from drift_policy import configs, demos
    assert "drift_policy.envs.runner" in graph["drift_policy.evaluation"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}}) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle():
    modules = project_modules()
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


READ_WITHOUT_SIMULATOR = """
import json, sys
import h5py, numpy as np
import {readers}
from drift_policy.data.robomimic_hdf5 import load_robomimic
with h5py.File(sys.argv[1], "w") as f:  # a robomimic file recorded with absolute actions: no replay through robosuite
    f.create_group("data").attrs["env_args"] = json.dumps({{"env_kwargs": {{"controller_configs": {{"type": "OSC_POSE", "control_delta": False}}}}}})
    f["data/demo_0/actions"] = np.zeros((3, 7))
    f["data/demo_0/obs/robot0_eef_pos"] = np.zeros((3, 3))
assert load_robomimic(sys.argv[1], abs_action=True).data["action"].shape == (3, 10)
print(sorted(m for m in sys.modules if m.split(".")[0] in {simulators!r}))
"""


def test_data_readers_start_no_simulator_unless_the_conversion_needs_one(tmp_path):
    readers = sorted(m for m in project_modules() if m.startswith("drift_policy.data"))
    code = READ_WITHOUT_SIMULATOR.format(readers=", ".join(readers), simulators=SIMULATORS)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "absolute.hdf5")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
