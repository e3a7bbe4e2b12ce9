"""One definition per task: configs/task/<name>.yaml, read through `Task`.

The yaml holds every fact of a task (shape_meta, dataset reader, env factory, max_steps, the scripted expert and
its demo count, Diffusion Policy's metrics and the paper's numbers); the trainer, the evaluation, the demo
generator and bench/table.py all read it through this module, so no fact has a second home.

Path rule: a relative dataset path in a task config is relative to the data root, DATA_ROOT: the `data/` folder
of the checkout (installed as the package drift_policy.demos, so a non-editable install carries the shipped
Push-T zarr with it). It never depends on the cwd. Absolute paths are used as given.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import hydra
from omegaconf import DictConfig, OmegaConf

from drift_policy import configs, demos

DATA_ROOT = Path(demos.__file__).parent
TASK_DIR = Path(configs.__file__).parent / "task"


def data_path(path: str | Path) -> Path:
    """A task config's dataset path on disk: absolute as given (after ~), relative ones under DATA_ROOT."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else DATA_ROOT / path


def task_names() -> list[str]:
    """Every task with a yaml in configs/task."""
    return sorted(p.stem for p in TASK_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class Task:
    """A task's config (hydra's cfg.task, or the dict saved inside a policy) with the questions asked of it."""

    cfg: DictConfig

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def max_steps(self) -> int:
        """Diffusion Policy's rollout length; the env is built with it and the runner cuts episodes at it."""
        return int(self.cfg.max_steps)

    @property
    def metrics(self) -> list[str]:
        """The metrics Diffusion Policy reports for the task (success_rate unless the yaml says otherwise)."""
        return list(self.cfg.get("metrics", ["success_rate"]))

    @property
    def multimodal(self) -> bool:
        """Whether episodes report an order of completed sub-goals (info["completed"]) whose split is reported."""
        return bool(self.cfg.get("multimodal", False))

    @property
    def paper(self) -> dict[str, Any]:
        """{obs: state|visual, dp: [...], drift: [...]}: the paper's Table 7 numbers per metric (None: not reported)."""
        return OmegaConf.to_container(self.cfg.paper) if "paper" in self.cfg else {}

    @property
    def expert(self) -> DictConfig | None:
        """{module, task, image, demos} of the scripted expert that makes the dataset, or None for a shipped one."""
        return self.cfg.get("expert")

    @property
    def dataset_path(self) -> Path:
        return data_path(self.cfg.dataset.path)

    def expert_module(self) -> ModuleType:
        """The expert's module, imported only now: each pulls in its own simulator."""
        if self.expert is None:
            raise ValueError(f"task {self.name!r} ships its dataset and has no scripted expert")
        return importlib.import_module(self.expert.module)

    def count_demos(self) -> int:
        """Demonstrations in the task's generated dataset (0 when missing); ValueError when the file was made
        for another task (its expert_task / expert_image attrs, or obs keys that the task needs and it lacks)."""
        path = self.dataset_path
        if not path.exists():
            return 0
        import h5py  # lazily: only generated (hdf5) datasets are counted

        with h5py.File(path, "r") as f:
            made, image = f.attrs.get("expert_task"), bool(f.attrs.get("expert_image", False))
            if made is not None and (made, image) != (self.expert.task, bool(self.expert.image)):
                raise ValueError(f"{path} holds demonstrations of {made!r} (image={image}), not of {self.expert.task!r} "
                                 f"(image={bool(self.expert.image)}) as task {self.name} needs: delete it (it is remade "
                                 "on first use) or point task.dataset.path elsewhere")
            demos = f["data"]
            have = set(demos[next(iter(demos))]["obs"]) if len(demos) else set()
            missing = sorted(set(self.cfg.dataset.obs_keys) - have)
            if missing:
                raise ValueError(f"{path} lacks obs keys {missing} of task {self.name} (it has {sorted(have)}): a dataset "
                                 "of another task? Delete it or point task.dataset.path elsewhere")
            return len(demos)

    def make_dataset(self) -> Any:
        """The task's ReplayBuffer (drift_policy.demos.generate.ensure_demonstrations makes a missing one first)."""
        return hydra.utils.instantiate(self.cfg.dataset, path=str(self.dataset_path))

    def make_env(self, **overrides: Any) -> Any:
        """A fresh env of the task, truncated at max_steps."""
        return hydra.utils.instantiate(self.cfg.env, max_steps=self.max_steps, **overrides)


def load_task(task: str | Mapping[str, Any] | DictConfig) -> Task:
    """A task by name (configs/task/<name>.yaml) or from its config (hydra's cfg.task, or a policy's saved dict)."""
    if isinstance(task, str):
        path = TASK_DIR / f"{task}.yaml"
        if not path.exists():
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(task_names())} (configs/task/*.yaml)")
        return Task(OmegaConf.load(path))
    cfg = task.copy() if isinstance(task, DictConfig) else OmegaConf.create(dict(task))
    target = OmegaConf.select(cfg, "env._target_") or ""
    if target.startswith("envs."):  # a policy saved before envs/ was installed as drift_policy.envs
        cfg.env._target_ = "drift_policy." + target
    return Task(cfg)
