"""ACT's temporal ensembling: query the policy every control step and execute, for the current step, a weighted average
of every still-valid prediction the recent chunks made for it, against jitter at chunk boundaries. A one-step policy
can afford a query per step (one network evaluation each); a 100-step diffusion sampler cannot.

    ensemble = TemporalEnsemble(policy, decay=0.01)   # a Policy, or an exported OnnxPolicy
    ensemble.reset()
    action = ensemble.step(obs)                       # one observation in, one action [Da] out

A plan made at step t is the executable part of its chunk, chunk[To - 1:] (predict_action's slice starts there), and
covers steps t .. t + T - To. The weights are exp(-decay * i), i = 0 for the oldest prediction (ACT's convention:
decay > 0 favours the older ones, 0 is a plain mean). decay=None averages nothing and executes the newest plan:
plain receding horizon, replan_every actions per plan (Policy.step's chunks when replan_every = n_action_steps).
"""
from __future__ import annotations

import math
from collections import deque
from numbers import Integral, Real
from typing import Any, Mapping, Protocol

import numpy as np
from torch import Tensor

from drift_policy.observations import ObsHistory, check_layout


class ChunkPredictor(Protocol):
    """What the ensemble needs of a policy: Policy and OnnxPolicy have it."""

    obs_meta: dict[str, dict]
    n_obs_steps: int
    horizon: int

    def predict_action(self, obs: Mapping[str, Any], full_chunk: bool = False, generator: Any = None) -> Any: ...


class TemporalEnsemble:
    """One action per call from a chunk policy: plans every replan_every calls, executes the weighted average of the
    valid predictions for the current step (or the newest plan's, with decay=None). Every batch row steps in lockstep
    (the env runner's rounds) and keeps its own predictions; reset() starts an episode."""

    def __init__(self, policy: ChunkPredictor, decay: float | None = 0.01, replan_every: int = 1) -> None:
        self.span = policy.horizon - policy.n_obs_steps + 1  # steps a plan covers, T - To + 1
        _check_settings(decay, replan_every, self.span)
        self.policy, self.decay, self.replan_every = policy, decay, replan_every
        self._history = ObsHistory(policy.obs_meta, policy.n_obs_steps)
        self._plans: deque[tuple[int, np.ndarray]] = deque()  # (step planned at, actions [B, span, Da]), oldest first
        self._t = 0  # steps since reset

    def reset(self) -> None:
        """Forget the history, the plans and the step count (start of an episode)."""
        self._history.clear()
        self._plans.clear()
        self._t = 0

    def step(self, obs: Mapping[str, Any]) -> np.ndarray:
        """One observation in, one action [Da] out, keeping the history like Policy.step."""
        self._history.append(obs)
        return self.predict_action(self._history.stacked())[0]

    def predict_action(self, obs: Mapping[str, Any], generator: Any = None) -> np.ndarray:
        """This step's action [B, 1, Da] ([1, Da] for an unbatched history [To, ...]); obs is used at the calls that
        plan, and generator (one, or one per row) draws their noise as in the policy's predict_action."""
        batched = check_layout(obs, self.policy.obs_meta, self.policy.n_obs_steps)
        rows = len(obs[next(iter(self.policy.obs_meta))]) if batched else 1
        if self._plans and rows != len(self._plans[-1][1]):
            raise ValueError(f"got a batch of {rows} observations after planning for {len(self._plans[-1][1])}: call "
                             "reset() at the start of each episode, and keep the batch size within one")
        if self._t % self.replan_every == 0:
            self._plan(obs, batched, generator)
        while self._plans[0][0] + self.span <= self._t:
            self._plans.popleft()
        action = self._combine()
        self._t += 1
        return action if batched else action[0]

    def describe(self) -> dict[str, Any]:
        """The execution mode, as eval.json records it."""
        mode = "receding_horizon" if self.decay is None else "temporal_ensemble"
        return {"mode": mode, "decay": self.decay, "replan_every": self.replan_every}

    def _plan(self, obs: Mapping[str, Any], batched: bool, generator: Any) -> None:
        """Predict a chunk and keep its executable part, for this step onward."""
        chunk = self.policy.predict_action(obs, full_chunk=True, generator=generator)
        chunk = chunk.detach().cpu().numpy() if isinstance(chunk, Tensor) else np.asarray(chunk)
        chunk = chunk if batched else chunk[None]
        self._plans.append((self._t, chunk[:, self.policy.n_obs_steps - 1 :]))

    def _combine(self) -> np.ndarray:
        """The valid predictions for the current step, weighted, [B, 1, Da]."""
        predictions = np.stack([plan[:, self._t - start] for start, plan in self._plans])  # [n, B, Da], oldest first
        if self.decay is None:
            return predictions[-1][:, None]
        weights = np.exp(-self.decay * np.arange(len(predictions)))
        average = np.tensordot(weights / weights.sum(), predictions, axes=1)
        return average[:, None].astype(predictions.dtype)


def _check_settings(decay: float | None, replan_every: int, span: int) -> None:
    """replan_every must leave every step a prediction; decay must be ACT's m >= 0, or None."""
    if isinstance(replan_every, bool) or not isinstance(replan_every, Integral) or not 1 <= replan_every <= span:
        raise ValueError(f"replan_every must be a whole number of steps in 1..{span}, got {replan_every!r}: a plan covers "
                         f"T - To + 1 = {span} steps, so plan at least that often (1 plans every step)")
    if decay is not None and (isinstance(decay, bool) or not isinstance(decay, Real) or not 0 <= decay < math.inf):
        raise ValueError(f"decay must be a finite number >= 0, got {decay!r}: ACT's m, weights exp(-m * i) with i = 0 for "
                         "the oldest prediction (0 averages them equally, e.g. 0.01); None executes the newest plan alone")
