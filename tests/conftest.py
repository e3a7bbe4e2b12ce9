"""Headless Linux (CI, a fresh server) has no display for MuJoCo's default GLFW backend: render with EGL there,
so the README's plain `pytest` command passes. Set before any test module imports mujoco."""
import os
import sys

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
