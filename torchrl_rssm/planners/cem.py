"""Cross-entropy method (CEM) planning in latent space (PlaNet, Hafner et al. 2019).

The optimiser is :func:`cem`, a plain function over tensors::

    for each iteration:
        sample N action sequences per environment from N(mean, std), clip to the bounds
        roll them out in the latent model, sum the predicted rewards
        refit mean and std to the top K

:class:`CEMPlanner` wraps it as a TorchRL policy module: it reads ``state`` /
``belief`` for a batch of environments ``[*B]`` and writes the first action of the
final mean.
"""
from __future__ import annotations

import torch

from .action_space import ActionSpace, Returns, top_k_elites
from .base import PlannerBase


def cem(
    returns_fn: Returns,
    mean: torch.Tensor,
    std: torch.Tensor,
    space: ActionSpace,
    *,
    num_candidates: int,
    top_k: int,
    optim_steps: int,
    min_std: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy method over action sequences.

    Args:
        returns_fn: ``actions [M, N, H, A] -> returns [M, N]``.
        mean, std: the initial plan, ``[M, H, A]`` (discrete: ``mean`` holds
            per-step probabilities, ``std`` is ignored).
        space: the :class:`ActionSpace` (sampling, clipping).
        num_candidates (N), top_k (K), optim_steps (I): CEM's sizes.
        min_std: lower bound of the refitted std, so that the search never
            collapses to a point (``top_k=1`` gives std 0 before the bound, not NaN).

    Returns:
        the final plan ``(mean, std)``, each ``[M, H, A]``.

    Examples:
        >>> import torch
        >>> from torchrl.data import Bounded
        >>> space = ActionSpace(Bounded(-1, 1, (1,)))
        >>> target = 0.5  # reward -(a - 0.5)^2 at every step
        >>> returns = lambda a: -((a - target) ** 2).sum((-1, -2))
        >>> mean, std = space.initial(1, 3, 1.0, "cpu", torch.float32)
        >>> mean, std = cem(returns, mean, std, space, num_candidates=200, top_k=20, optim_steps=8)
        >>> bool((mean - target).abs().max() < 0.05)
        True
    """
    for _ in range(optim_steps):
        actions = space.sample(mean, std, num_candidates)          # [M, N, H, A], clipped
        returns = returns_fn(actions)                              # [M, N]
        elites, _ = top_k_elites(actions, returns, top_k)          # [M, K, H, A]
        mean = elites.mean(1)                                      # discrete: elite frequencies
        if not space.discrete:
            # population std (divide by K): one elite gives 0, not NaN; min_std keeps it searching.
            # Spelled out because torch.std's reduction is ~7x slower on these small [M, K, H, A].
            std = (elites - mean.unsqueeze(1)).square().mean(1).sqrt().clamp_min(min_std)
    return mean, std


class CEMPlanner(PlannerBase):
    """CEM planner over a latent model, as a TorchRL policy module.

    A drop-in for :class:`torchrl.modules.planners.CEMPlanner` (same positional
    arguments: ``env, planning_horizon, optim_steps, num_candidates, top_k,
    reward_key, action_key``) that also takes this package's world model directly.

    Given ``state`` ``[*B, S]`` and ``belief`` ``[*B, D]`` for a batch of
    environments, it samples ``[*B, N, H, A]`` candidate sequences, rolls them out
    with the RSSM prior as tensors (no ``env.rollout``, no tensordict per step),
    scores them with the reward head, refits mean/std to the top K for I iterations
    and writes the first action of the mean to ``action_key``.

    Args:
        model: one of

            - a :class:`~torchrl_rssm.modules.RSSMWorldModel` (give ``action_spec``);
            - a TorchRL model-based env such as ``DreamerEnv`` whose ``world_model``
              holds an RSSM prior and a reward module under the Dreamer keys: when
              the prior is this package's ``RSSMPrior`` the fast tensor path runs;
              other modules run through the env's ``world_model`` on one batched
              tensordict per step; any other stateless env is stepped with
              ``env.step`` (like TorchRL's planner, minus ``env.rollout``);
            - a pair ``(prior, reward)``: ``prior(state, belief, action) -> (mean, std,
              state, belief)`` (TorchRL's convention) and ``reward(state, belief)``;
              or a triple ``(prior, reward, continuation)``.

            DreamerV3 world models plan too: an ``RSSMWorldModel`` holding an
            :class:`~torchrl_rssm.modules.RSSMRolloutV3`, or ``(RSSMPriorV3, reward)``.
            The categorical prior is stepped by the same imagination loop as its
            rollout's ``imagine``; a two-hot reward head
            (:class:`~torchrl_rssm.modules.DreamerV3RewardHead`) is read at its decoded
            expectation, and a continuation head weights each step's reward by the
            probability that the episode is still running
            (:class:`~torchrl_rssm.planners.TensorReturns`).
        planning_horizon (H): length of the imagined sequences (PlaNet: 12).
        optim_steps (I): CEM iterations (PlaNet: 10).
        num_candidates (N): sequences sampled per iteration (PlaNet: 1000).
        top_k (K): elites refitted to (PlaNet: 100).
        reward_key: reward key of the env path (TorchRL's default ``("next", "reward")``).
        action_key: where the action is written.

    Keyword Args:
        action_spec: the action spec (default: the env's). Bounded and unbounded
            float boxes ``[A]``, ``OneHot`` and ``Categorical`` specs.
        reward_model: overrides the world model's reward head.
        continuation_model: a continuation head ``(state, belief) -> (logits, probability)``
            (e.g. :class:`~torchrl_rssm.modules.DreamerV3ContinuationHead`): rewards after a
            predicted episode end count less (see above). Default: none, every step counts.
        state_key, belief_key: where the latent is read (``"state"``, ``"belief"``).
        warm_start: start from the previous plan shifted by one step (read from and
            written to ``plan_key``, default ``"plan"``; rows where ``is_init_key`` is
            set start cold). The policy's primer carries the plan across env steps.
        init_std: initial std as a fraction of the box half-width (PlaNet: 1).
        warm_std: std around a warm-started plan, same unit (default 0.25); for
            discrete actions the weight of the uniform mixed into the shifted plan.
        min_std: lower bound of the refitted std (default 1e-3).
        sample_states: roll out with prior samples (PlaNet) or with prior means.
        compile: ``torch.compile(fullgraph=True, dynamic=False)``, on the first call: the
            whole search on CUDA, only the latent rollout on CPU (inductor's CPU
            random-number and top-k kernels make a whole-search graph slower than eager).
            A dict adds compile options, e.g. ``{"backend": "aot_eager"}``, and
            ``"scope": "search" | "rollout"`` overrides that choice. On CPU it pays for
            small models (``benchmarks/bench_planner.py --compile``); at PlaNet's size
            with 8 environments the eager path was faster there.
        cuda_graph: capture the search in a CUDA graph per batch shape (CUDA only):
            the first call per shape warms up and captures, later calls replay.

    Tensor API: :meth:`plan` (latents -> action), :meth:`optimize` (latents and an
    optional initial plan -> final ``(mean, std)``), :meth:`start_plan`. Planning runs
    under ``torch.no_grad()``. The fast path keeps scratch buffers between calls
    (``planner.returns_model.release_workspace()`` frees them); use one planner per thread.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Composite, Unbounded
        >>> from torchrl_rssm.modules import make_world_model
        >>> action_spec = Bounded(-1, 1, (2,))
        >>> wm = make_world_model(Composite(observation=Unbounded((5,))), action_spec,
        ...                       state_dim=8, belief_dim=16, hidden_dim=16)
        >>> planner = CEMPlanner(wm, 5, 3, 50, 5, action_spec=action_spec)
        >>> td = TensorDict(state=torch.zeros(4, 8), belief=torch.zeros(4, 16), batch_size=[4])
        >>> planner(td)["action"].shape
        torch.Size([4, 2])
    """

    # The constructor is PlannerBase's (TorchRL's positional signature plus keyword options).

    def search(self, returns_fn: Returns, mean: torch.Tensor, std: torch.Tensor,
               optim_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        return cem(returns_fn, mean, std, self.space, num_candidates=self.num_candidates, top_k=self.top_k,
                   optim_steps=optim_steps, min_std=self.min_std)
