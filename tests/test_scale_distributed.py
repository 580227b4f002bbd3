"""torchrun scale-out: gradients averaged over 2 CPU processes (gloo), weights broadcast, mismatched configs."""
from __future__ import annotations

import gc
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchrl_rssm.envs import make_env
from torchrl_rssm.recipes import preset
from torchrl_rssm.recipes.distributed import (ConfigMismatchAcrossRanksError, broadcast_parameters, check_same_config,
                                              config_hash, rank_config)
from torchrl_rssm.recipes.trainer import agent_class

B, L = 2, 8  # chunks per rank, chunk length
# Should a rank ever stall again (the teardown deadlock below held a CI run until its 90-minute limit),
# the test fails in minutes: every collective times out, and the parent kills ranks past the deadline.
COLLECTIVE_TIMEOUT = timedelta(seconds=60)
SPAWN_DEADLINE_S = 180.0


def _cfg(name: str = "tiny"):
    cfg = preset(name)
    cfg.from_pixels = False
    return cfg


def _params(agent) -> dict[str, torch.Tensor]:
    """Every trained parameter: the world model's (PlaNet), plus the actor's and value's (Dreamer)."""
    nets = {"world_model": agent.world_model}
    nets.update({name: getattr(agent, name) for name in ("actor", "value", "critic") if hasattr(agent, name)})
    return {f"{n}.{k}": v.detach().clone() for n, net in nets.items() for k, v in net.state_dict().items()}


def _return_norm(agent) -> dict[str, torch.Tensor]:
    """DreamerV3's return-normalisation state (the EMA of the return percentiles); empty for the others."""
    return {k: v.clone() for k, v in agent.state_dict().get("return_norm", {}).items()}


def _agent_and_batch(cfg, seed: int = 0):
    """The same initial agent and the same [2B, L] batch in every process (fixed seeds)."""
    torch.manual_seed(seed)
    env = make_env(cfg.env, from_pixels=False, action_repeat=cfg.action_repeat, max_episode_steps=20, seed=0)
    agent = agent_class(cfg.algo)(cfg, env, torch.device("cpu"))
    retnorm = getattr(getattr(agent, "actor_loss", None), "retnorm", None)
    if retnorm is not None:  # DreamerV3: the scale is this batch's percentile range (not the EMA's floor of 1)
        retnorm.rate, retnorm.min_scale = 1.0, 1e-3
        _spread_two_hot_heads(agent.world_model.reward_head, agent.critic)
    env.append_transform(agent.make_tensordict_primer())
    rollouts = [env.rollout(L, break_when_any_done=False) for _ in range(2 * B)]
    batch = torch.stack(rollouts).exclude("state", "belief", ("next", "state"), ("next", "belief"))
    return agent, batch


@torch.no_grad()
def _spread_two_hot_heads(*heads: torch.nn.Module) -> None:
    """Two-hot heads (zero at initialisation, so every imagined return is 0) made to predict values
    between about 0.2 and 2.5 that depend on the latent: the returns then have a percentile range.
    Only bins 128-135 get logits (30, plus a latent-dependent part); the others stay near 0, whose
    exponentially spaced values (up to 5e8) then weigh about e^-30 each."""
    for head in heads:
        last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.zero_()
        last.weight[128:136].normal_(0.0, 1.0)
        last.bias[128:136] = 30.0


def _size(size: tuple) -> tuple:
    return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size


def _mean_latents() -> None:
    """Samples without noise in this process: Gaussian draws at their means (zero noise), categorical
    and truncated-normal draws at the median of their inverse CDF (uniform 0.5). The losses' gradients are then
    plain means over chunks, so averaging two halves' gradients (DDP) equals the whole batch's.
    (With sampled latents, half a batch draws different noise than the whole: not comparable.)"""
    torch.randn = lambda *size, generator=None, **kw: torch.zeros(*_size(size), **kw)
    torch.randn_like = lambda x, **kw: torch.zeros_like(x, **kw)
    torch.rand = lambda *size, generator=None, **kw: torch.full(_size(size), 0.5, **kw)
    torch.Tensor.uniform_ = lambda self, low=0.0, high=1.0, generator=None: self.fill_((low + high) / 2)


def _worker(rank: int, world: int, init_file: str, out_dir: str, preset_name: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        _rank_work(rank, out_dir, preset_name)
        # Nothing holding the process group may outlive its Python handle: freed last, the gloo group
        # is destroyed while holding the GIL and can deadlock against gloo's worker thread (which needs
        # the GIL to free its last work item; pytorch#56297; seen with DDP's reducer in 2 of 7 runs).
        # torchrl_rssm.cli's train does the same under torchrun.
        gc.collect()
    finally:
        dist.destroy_process_group()


def _rank_work(rank: int, out_dir: str, preset_name: str) -> None:
    # 1. mismatched configurations: a clear error on every rank, naming the field
    bad = _cfg()
    if rank == 1:
        bad.model_lr = 0.5
    try:
        check_same_config(bad)
        result = "no error"
    except ConfigMismatchAcrossRanksError as err:
        result = str(err)
    torch.save(result, Path(out_dir) / f"mismatch{rank}.pt")
    # 2. agents built from different seeds hold rank 0's weights after the broadcast
    cfg = _cfg(preset_name)
    check_same_config(cfg)
    torch.manual_seed(rank)
    other, _ = _agent_and_batch(cfg, seed=rank)
    broadcast_parameters(other.networks().values())
    torch.save(_params(other), Path(out_dir) / f"broadcast{rank}.pt")
    # 3. one update on this rank's half of the batch: the agent averages its gradients over the ranks
    agent, batch = _agent_and_batch(cfg)
    agent.process_group = dist.group.WORLD  # what the trainer sets under torchrun
    _mean_latents()
    agent.update(batch[rank * B:(rank + 1) * B])
    torch.save(_params(agent), Path(out_dir) / f"params{rank}.pt")
    torch.save(_return_norm(agent), Path(out_dir) / f"return_norm{rank}.pt")


def _spawn_with_deadline(fn, args: tuple, nprocs: int, deadline_s: float = SPAWN_DEADLINE_S) -> None:
    """``mp.spawn(fn, args, nprocs)``, but the ranks are killed and the test fails after ``deadline_s``."""
    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + deadline_s
    while not context.join(timeout=1.0):  # raises as soon as one rank fails
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            for process in context.processes:
                process.join(timeout=10)
            pytest.fail(f"the {nprocs} gloo ranks did not finish within {deadline_s:.0f} s; killed them")


@pytest.mark.parametrize("preset_name", ["tiny", "dreamer-tiny", "dreamerv3-tiny"])
def test_ddp_update_on_two_gloo_ranks_equals_one_update_on_both_batches(tmp_path, preset_name):
    """Every agent averages its gradients through ``clip_gradients``: PlaNet's one network, Dreamer's and
    DreamerV3's three (DreamerV3's return percentiles over both ranks' returns)."""
    _spawn_with_deadline(_worker, (2, str(tmp_path / "init"), str(tmp_path), preset_name), nprocs=2)
    for rank in range(2):
        message = torch.load(tmp_path / f"mismatch{rank}.pt")
        assert "different configurations" in message and "'model_lr'" in message and "0.5" in message
    broadcast = [torch.load(tmp_path / f"broadcast{r}.pt") for r in range(2)]
    fresh, _ = _agent_and_batch(_cfg(preset_name), seed=1)
    assert any(not torch.equal(v, broadcast[0][k]) for k, v in _params(fresh).items())  # seeds 0 and 1 differ
    for key, value in broadcast[0].items():
        assert torch.equal(broadcast[1][key], value), key  # rank 1 now holds rank 0's
    ranks = [torch.load(tmp_path / f"params{r}.pt") for r in range(2)]
    agent, batch = _agent_and_batch(_cfg(preset_name))
    randn, randn_like, rand, uniform_ = torch.randn, torch.randn_like, torch.rand, torch.Tensor.uniform_
    _mean_latents()
    before = _params(agent)
    try:
        agent.update(batch)  # one process, both ranks' chunks together
    finally:
        torch.randn, torch.randn_like, torch.rand, torch.Tensor.uniform_ = randn, randn_like, rand, uniform_
    after = _params(agent)
    for r in range(2):  # the return percentiles are taken over both ranks' returns, as over the whole batch
        for key, value in _return_norm(agent).items():
            torch.testing.assert_close(torch.load(tmp_path / f"return_norm{r}.pt")[key], value, msg=f"rank {r} {key}")
    changed = set()
    for key, value in after.items():
        for r in range(2):
            torch.testing.assert_close(ranks[r][key], value, atol=1e-5, rtol=1e-5, msg=f"rank {r} {key}")
        if not torch.equal(value, before[key]):
            changed.add(key)
    assert len(changed) > 5  # the update really moved the parameters, of every network trained
    assert {k.split(".")[0] for k in changed} == {k.split(".")[0] for k in after}


def test_config_hash_ignores_per_rank_fields_and_rank_config_seeds_apart():
    a, b = _cfg(), _cfg()
    b.device, b.logdir = "cuda:3", "elsewhere"
    assert config_hash(a) == config_hash(b)
    b.batch_size += 1
    assert config_hash(a) != config_hash(b)
    r0, r1 = rank_config(a, 0), rank_config(a, 1, local_rank=1)
    assert r0.seed != r1.seed and r0.logdir != r1.logdir and r1.logdir.endswith("rank1")


def test_torchrun_train_keeps_every_ranks_dreamer_weights_equal(tmp_path):
    """`torchrun -m torchrl_rssm.cli train`: ranks seeded apart start from rank 0's weights and stay equal."""
    import json
    import subprocess
    import sys

    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # the `torchrun` command
    logdir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [*torchrun, "--standalone", "--nproc-per-node", "2", "-m", "torchrl_rssm.cli", "train", "--preset",
           "dreamer-tiny", "--logdir", str(logdir), "--no-progress", "--set", "video_every=0", "--set", "test_every=0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=SPAWN_DEADLINE_S)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["updates"] > 0
    ranks = [torch.load(path / "checkpoint" / "state.pt", weights_only=False) for path in (logdir, logdir / "rank1")]
    assert ranks[0]["config"]["seed"] != ranks[1]["config"]["seed"]  # each rank collects its own episodes
    for key in ("world_model", "actor", "value"):
        for name, tensor in ranks[0][key].items():
            assert torch.equal(tensor, ranks[1][key][name]), f"{key}.{name}"
