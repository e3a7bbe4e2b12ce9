"""Packaging and the path rule: envs/, data/ and configs/ install inside drift_policy, the wheel carries the shipped
Push-T zarr and the configs, and training works from any directory."""
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def package_folders() -> dict[str, Path]:
    """Every source folder holding an __init__.py, by the package name it installs as."""
    roots = {"drift_policy": ROOT / "drift_policy", "image_gen": ROOT / "image_gen",
             **{name: ROOT / folder for name, folder in PYPROJECT["package-dir"].items()}}
    found = {}
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                found[".".join([name, *init.parent.relative_to(folder).parts])] = init.parent
    return found


def test_every_package_folder_is_listed_and_none_installs_as_data_or_envs():
    assert sorted(PYPROJECT["packages"]) == sorted(package_folders())
    assert not {p.split(".")[0] for p in PYPROJECT["packages"]} & {"data", "envs", "configs"}


@pytest.mark.slow
def test_the_wheel_carries_the_pusht_zarr_and_configs_but_no_generated_demos(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    names = zipfile.ZipFile(next(tmp_path.glob("drift_policy-*.whl"))).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"drift_policy", "image_gen"}
    zarr = "drift_policy/demos/pusht/pusht_cchi_v7_replay.zarr/"
    assert {zarr + ".zgroup", zarr + "data/action/.zarray", zarr + "meta/episode_ends/0"} <= set(names)
    assert {"drift_policy/configs/train_policy.yaml", "drift_policy/configs/task/push_t.yaml",
            "drift_policy/envs/pusht.py", "drift_policy/demos/generate.py", "image_gen/configs/train.yaml"} <= set(names)
    assert not [n for n in names if "/generated/" in n]


def test_training_then_evaluating_from_another_directory_uses_the_shipped_data_and_writes_under_the_cwd(tmp_path):
    cmd = [sys.executable, "-m", "drift_policy.train", "task=push_t", "train.num_steps=2", "train.batch_size=4",
           "train.eval_every=0", "train.final_eval=false", "policy.unet.down_dims=[16,32,64]"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "outputs" / "runs" / "push_t_drift" / "policy" / "config.json").exists()
    evaluate = [sys.executable, "-m", "drift_policy.eval", "--rollouts", "1", "--videos", "0", "--n-envs", "1"]
    result = subprocess.run(evaluate, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "outputs" / "runs" / "push_t_drift" / "eval" / "eval.json").exists()
