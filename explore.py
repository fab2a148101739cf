"""explore.py — DAPO reinforcement learning: RLoop's exploration phase, and the vanilla-RL baseline run longer.

One training step (DAPO, arXiv 2503.14476, as verl's DAPO recipe runs it):
  1. draw prompts (a fixed, seeded order over the prompt set) and sample n responses to each       [collect_batch]
  2. reward = verifier score (+1 / -1, lib/algo/reward.py) + overlong penalty (soft, over the last
     --overlong-buffer tokens before --max-new-tokens)                                              [rollout]
  3. dynamic sampling: drop every prompt whose n responses are all right or all wrong (their group-normalised
     advantage is 0: they would only dilute the token mean), and keep drawing generation batches until
     --prompts-per-step prompts survive (--max-gen-batches caps the draws)                          [collect_batch]
  4. advantage of each response = (r - mean of its group) / (std of its group + 1e-6)              [advantages]
  5. prompts-per-step / mini-batch optimiser updates (AdamW); each sees --mini-batch prompts with all their
     responses, accumulates gradients over micro-batches and divides the token-mean loss by the token count of
     the WHOLE mini-batch, so micro-batching never changes the objective (lib/train/update.rl_update). The old
     log-probs are the sampling policy's, scored by the training forward before any update (as verl): the first
     update sees a ratio of exactly 1                                                             [train_on_batch]
  6. the loss per token: max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), for A < 0 capped at -A c (dual clip),
     r = pi(token) / pi_old(token); no KL penalty, no entropy bonus (DAPO drops both)              [policy_loss]
  7. push the new weights into the rollout engine (vLLM: in memory; the HF engine samples the policy itself)

The four DAPO tricks, each one flag: --clip-higher (eps_high 0.28 > eps_low 0.2), --dynamic-sampling,
--loss-agg token-mean (token-level loss), --overlong-shaping. --kl-coef C > 0 adds C x KL(pi || pi_init) per token
(verl's low_var_kl), pi_init = this run's initial policy, frozen: the constrained-optimisation baseline.

    python explore.py          # the toy: 60 steps in ~2 min on 2 CPU cores (the full-scale flags: docs/full-scale.md)

To fork: the advantage is `advantages`, the loss `policy_loss` (a variant is one more function with its signature
and one entry in LOSSES, chosen by --loss). Flags, setup, resume, logging and checkpoints live in
lib/explore_setup.py; the update's mechanics (micro-batches, the token mean across them and the ranks, the
non-finite skip) in lib/train/update.py.

Writes under --out metrics.jsonl (a row per step), rollouts.jsonl (every sampled response), ckpt_{step:06d}/
(from_pretrained / vLLM folders; the newest holds resume/), args.json, done.json (docs/outputs.md). --resume ends
with the weights an uninterrupted run ends with (flags that shape the weights must not change). Under torchrun
FSDP2 shards the policy; every rank draws the same prompts, each rollout replica samples its share, the scored
shares are gathered so every rank takes the same decisions, each rank trains on its share (docs/scaling.md).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lib import explore_setup as setup
from lib.algo.dapo import aggregate, group_advantages, kept_group_ids, kl_penalty, masked_mean, overlong_penalty
from lib.engine.rollout import Completion, gather_replicas, replica_share, sample_and_score, sample_seed
from lib.run import cli, data
from lib.train import dist
from lib.train.update import LossFn, MicroBatch, Seq, UpdateConfig, rl_update

RewardFn = setup.RewardFn  # (response, ground_truth) -> {"score", "acc", "pred"}


def advantages(groups: list[Group]) -> list[list[float]]:
    """The advantage of every response, group by group: (r - mean of its group) / (std of its group + 1e-6)
    (GRPO / DAPO, lib/algo/dapo.group_advantages), r = verifier score + overlong penalty.
    To fork: return other numbers here (e.g. r - mean without the std, or a leave-one-out baseline); one
    float per response of each group, in group order. Nothing else in the update needs to change."""
    rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64)
    gid = torch.tensor([i for i, g in enumerate(groups) for _ in g.rewards])
    flat, out, k = group_advantages(rewards, gid).tolist(), [], 0
    for g in groups:
        out.append(flat[k:k + len(g.rewards)])
        k += len(g.rewards)
    return out


# ---------------------------------------------------------------------------------------------------------
# The policy losses. Each: log_probs [B, T] (with gradient), old_log_probs [B, T] (the sampling policy's),
# advantages [B] or [B, T], mask [B, T] (1 on response tokens) -> (this call's share of the update's loss, stats:
# python floats, means over the call's valid tokens). global_tokens / global_seqs: the whole update's token /
# sequence count (lib/algo/dapo.aggregate); rollout_is_weights [B, T]: the mismatch correction, times every token.


def policy_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor, eps_low: float = 0.2,
                eps_high: float = 0.28, clip_ratio_c: float = 10.0, agg: str = "token-mean",
                global_tokens: float | Tensor | None = None, global_seqs: float | Tensor | None = None,
                rollout_is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """DAPO's clipped surrogate (clip-higher + dual clip), token by token, as verl's compute_policy_loss_vanilla.
    stats: clipfrac_high (A > 0, ratio > 1 + eps_high: the upper clip holds, no gradient), clipfrac_low (A < 0, ratio
    < 1 - eps_low); their sum is verl's pg_clipfrac. clipfrac_dual (A < 0, ratio > c: verl's pg_clipfrac_lower).
    approx_kl: the mean of old - new log-prob (verl's ppo_kl, k1 of KL(old || new))."""
    assert clip_ratio_c > 1.0, "dual clip needs c > 1"
    m, A, log_ratio = token_terms(log_probs, old_log_probs, advantages, mask)
    log_ratio = log_ratio.clamp(-20.0, 20.0)  # as verl: exp stays finite
    ratio = torch.exp(log_ratio)  # [B, T]; exactly 1 on the first update (log_probs == old)
    pg_unclipped = -A * ratio
    pg_clipped = -A * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    # pessimistic (larger) loss: once the ratio left the trust region in the direction the advantage pushes it, the
    # loss is flat and the token stops contributing gradient
    pg_ppo = torch.maximum(pg_unclipped, pg_clipped)
    # dual clip: for A < 0 an exploding ratio would make the loss unbounded; cap it at -A * c
    pg = torch.where(A < 0, torch.minimum(pg_ppo, -A * clip_ratio_c), pg_ppo)  # [B, T]
    if rollout_is_weights is not None:
        pg = pg * rollout_is_weights
    with torch.no_grad():
        clipped = pg_clipped > pg_unclipped  # [B, T] verl's pg_clipfrac condition
        stats = {"clipfrac_high": masked_mean((clipped & (A > 0)).float(), m).item(),
                 "clipfrac_low": masked_mean((clipped & (A < 0)).float(), m).item(),
                 "clipfrac_dual": masked_mean(((pg_ppo > -A * clip_ratio_c) & (A < 0)).float(), m).item(),
                 "approx_kl": masked_mean(-log_ratio, m).item()}
    return aggregate(pg, m, agg, global_tokens, global_seqs), stats


def token_terms(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor):
    """What every loss reads, with padding kept out of the arithmetic (padding often holds -inf / nan log-probs, and
    inf * 0 = nan): the mask (bool), the advantage per token (detached; [B] broadcast along the response), and the
    log-ratio log pi - log pi_old, zero on padding; all [B, T] in fp32 or wider (exp of bf16 log-ratios is too
    coarse)."""
    assert log_probs.shape == old_log_probs.shape == mask.shape, "log_probs / old_log_probs / mask must be [B, T]"
    m = mask.to(torch.bool)
    dt = torch.promote_types(log_probs.dtype, torch.float32)
    zero = torch.zeros((), dtype=dt, device=log_probs.device)
    A = advantages.detach().to(dt)
    A = torch.where(m, A[:, None].expand_as(m) if A.dim() == 1 else A, zero)
    log_ratio = torch.where(m, log_probs.to(dt) - old_log_probs.detach().to(dt), zero)
    return m, A, log_ratio


def gspo_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor, eps_low: float = 0.2,
              eps_high: float = 0.28, clip_ratio_c: float = 10.0, agg: str = "token-mean",
              global_tokens: float | Tensor | None = None, global_seqs: float | Tensor | None = None,
              rollout_is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """GSPO (arXiv 2507.18071), as verl's compute_policy_loss_gspo: one ratio per sequence, the geometric mean of its
    token ratios s = exp(mean_t log r_t), clipped PPO-style (no dual clip: clip_ratio_c is unused); every token
    carries s in value and its own log-prob's gradient. The paper clips far tighter than DAPO (--eps-low 3e-4
    --eps-high 4e-4) and aggregates per sequence (--loss-agg seq-mean-token-mean)."""
    m, A, log_ratio = token_terms(log_probs, old_log_probs, advantages, mask)
    seq_log_ratio = log_ratio.sum(-1) / m.sum(-1).clamp(min=1)  # [B] log s
    logp = torch.where(m, log_probs.to(log_ratio.dtype), torch.zeros_like(log_ratio))
    log_s = (logp - logp.detach() + seq_log_ratio.detach()[:, None]).clamp(max=10.0)  # value log s, grad d logp
    s = torch.exp(log_s)  # [B, T]
    pg_unclipped, pg_clipped = -A * s, -A * s.clamp(1.0 - eps_low, 1.0 + eps_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)
    if rollout_is_weights is not None:
        pg = pg * rollout_is_weights
    with torch.no_grad():
        clipped = pg_clipped > pg_unclipped
        stats = {"clipfrac_high": masked_mean((clipped & (A > 0)).float(), m).item(),
                 "clipfrac_low": masked_mean((clipped & (A < 0)).float(), m).item(),
                 "approx_kl": masked_mean(-log_ratio, m).item()}
    return aggregate(pg, m, agg, global_tokens, global_seqs), stats


def cispo_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor, eps_low: float = 0.2,
               eps_high: float = 0.28, clip_ratio_c: float = 10.0, agg: str = "token-mean",
               global_tokens: float | Tensor | None = None, global_seqs: float | Tensor | None = None,
               rollout_is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585), as verl's compute_policy_loss_cispo: REINFORCE on every token,
    -sg(clip(r, 1 - eps_low, 1 + eps_high)) A log pi, the clipped ratio a stop-gradient weight: a clipped token still
    contributes gradient (PPO's clip silences it). clip_ratio_c is unused."""
    m, A, log_ratio = token_terms(log_probs, old_log_probs, advantages, mask)
    log_ratio = log_ratio.clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    weight = ratio.clamp(1.0 - eps_low, 1.0 + eps_high).detach()
    logp = torch.where(m, log_probs.to(log_ratio.dtype), torch.zeros_like(log_ratio))
    pg = -weight * A * logp
    if rollout_is_weights is not None:
        pg = pg * rollout_is_weights
    with torch.no_grad():
        stats = {"clipfrac_high": masked_mean((ratio > 1.0 + eps_high).float(), m).item(),
                 "clipfrac_low": masked_mean((ratio < 1.0 - eps_low).float(), m).item(),
                 "approx_kl": masked_mean(-log_ratio, m).item()}
    return aggregate(pg, m, agg, global_tokens, global_seqs), stats


LOSSES: dict[str, Callable[..., tuple[Tensor, dict[str, float]]]] = {  # --loss NAME: policy_loss's signature
    "dapo": policy_loss,
    "gspo": gspo_loss,
    "cispo": cispo_loss,
}


def rollout_correction(old_log_probs: Tensor, rollout_log_probs: Tensor, mask: Tensor, level: str,
                       threshold: float) -> tuple[Tensor, dict[str, float]]:
    """Truncated importance weights for the sampler/trainer mismatch, as verl's compute_rollout_correction_weights:
    the responses were sampled by the engine (bf16, other kernels), the loss assumes the trainer's policy, so every
    token's loss is weighed by min(pi_trainer / pi_sampler, threshold), per token ("token") or one weight per
    response, the product over its tokens ("sequence"), repeated along it. pi_trainer: the old log-probs (the
    training forward before the update). A response with no engine log-probs (nan) weighs 1. -> (weights [B, T],
    detached, 0 on padding; stats: rollout_is_mean, the mean weight, and rollout_is_truncated, the share truncated)."""
    m = mask.to(torch.bool)
    dt = torch.promote_types(old_log_probs.dtype, torch.float32)
    known = m & torch.isfinite(rollout_log_probs)
    log_ratio = torch.where(known, old_log_probs.detach().to(dt) - rollout_log_probs.to(dt), 0.0)
    if level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(log_ratio)
    raw = torch.exp(log_ratio.clamp(-20.0, 20.0)) * m  # (verl's safety bound)
    weights = raw.clamp(max=threshold).detach()
    stats = {"rollout_is_mean": masked_mean(weights, m).item(),
             "rollout_is_truncated": masked_mean((raw > threshold).to(dt), m).item()}
    return weights, stats


def micro_batch_loss(cfg: setup.Loss) -> LossFn:
    """The function the update machinery calls on every micro-batch: the --loss variant on its sampled tokens (the
    micro-batch's share of the mini-batch loss), weighed by --rollout-is's correction, plus --kl-coef x the KL to the
    initial policy, aggregated alike."""
    variant = LOSSES[cfg.loss]

    def loss_fn(logp: Tensor, mb: MicroBatch, global_tokens: float, global_seqs: float):
        weights, is_stats = None, {}
        if cfg.rollout_is != "none":  # (no engine log-probs at all: every weight 1)
            rollout = mb.rollout_logp if mb.rollout_logp is not None else torch.full_like(mb.old_logp, torch.nan)
            weights, is_stats = rollout_correction(mb.old_logp, rollout, mb.mask, cfg.rollout_is,
                                                   cfg.rollout_is_threshold)
        loss, stats = variant(logp, mb.old_logp, mb.adv, mb.mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                              clip_ratio_c=cfg.clip_ratio_c, agg=cfg.agg, global_tokens=global_tokens,
                              global_seqs=global_seqs, rollout_is_weights=weights)
        stats.update(is_stats)
        if cfg.kl_coef:  # (mb.ref_logp: the frozen initial policy's log-probs)
            kl = kl_penalty(logp, mb.ref_logp)  # [b, T]
            loss = loss + cfg.kl_coef * aggregate(kl, mb.mask, cfg.agg, global_tokens, global_seqs)
            stats["kl"] = masked_mean(kl.detach(), mb.mask).item()
        return loss, stats

    return loss_fn


# ---------------------------------------------------------------------------------------------------------
# A step's batch: rollouts, rewards, DAPO's dynamic sampling


@dataclass
class Group:  # one prompt and its n scored responses
    problem: data.Problem
    prompt_ids: list[int]
    completions: list[Completion]
    rewards: list[float]  # score + overlong penalty
    accs: list[bool]
    rows: list[dict]  # the rollouts.jsonl records (Trajectory fields + kept): what was sampled
    replayed: int = 0  # responses that are a stored success, not a sample (--replay)


@dataclass
class StepBatch:
    groups: list[Group]  # the groups trained on (at most prompts_per_step)
    gen_batches: int
    drawn_groups: int
    passed_filter: int  # groups with a spread in the filter metric (all, with dynamic sampling off)
    rows: list[dict]  # every rollout drawn this step
    capped: bool  # the --max-gen-batches cap ended the drawing before the batch was full


def rollout(engine, problems, tokenizer, reward_fn: RewardFn, cfg: setup.Sampling, step: int, gen: int) -> list[Group]:
    """Sample and score one generation batch, add the overlong penalty -> its groups, in draw order, on every
    rank. Under torchrun each rollout replica (a rank, or a group of --tp ranks sharing one vLLM engine) samples
    and scores a contiguous share (its own seed), and the shares are gathered in replica order."""
    mine, replica = replica_share(problems, cfg.tp)
    scored = sample_and_score(engine, mine, reward_fn, n=cfg.n_samples, max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, top_p=cfg.top_p, tokenizer=tokenizer,
                              seed=sample_seed(cfg.seed, step, gen, replica), step=step, source="explore")
    if dist.is_distributed():
        scored = gather_replicas(scored, cfg.tp)
    shaping = cfg.overlong_buffer if cfg.overlong_shaping else 0
    groups = []
    for s in scored:
        pen = overlong_penalty([len(c.token_ids) for c in s.completions], cfg.max_new_tokens, shaping,
                               cfg.overlong_factor)
        for t, d in zip(s.trajectories, pen.tolist()):
            t.reward += d  # the record's reward is what the advantage sees
        rows = [{**t.to_dict(), "kept": False} for t in s.trajectories]
        groups.append(Group(s.problem, s.prompt_ids, s.completions, [t.reward for t in s.trajectories],
                            [t.acc for t in s.trajectories], rows))
    return groups


def replay(groups: list[Group], store: dict) -> None:
    """--replay (experience replay, the baseline RLoop's paper leaves open): in a group with no success, the
    newest earlier success of its prompt (store: problem id -> (token ids, reward)) takes its last response's place,
    before dynamic sampling, so the mixed group's advantages are computed over it. It is trained on like a sample
    of the current policy: its old log-probs are the trainer's, it has no engine log-probs (rollout weight 1)."""
    for g in groups:
        if not any(g.accs) and g.problem.id in store:
            ids, reward = store[g.problem.id]
            g.completions[-1] = Completion(list(ids), None, "", "stop")
            g.rewards[-1], g.accs[-1], g.replayed = reward, True, 1


def remember(store: dict, rows) -> dict:
    """The replay store: the newest successful sampled response of each prompt (rollouts.jsonl rows, in order)."""
    for row in rows:
        if row["acc"] and row.get("response_ids"):
            store[row["problem_id"]] = (row["response_ids"], row["reward"])
    return store


def collect_batch(engine, stream: data.PromptStream, tokenizer, reward_fn: RewardFn, cfg: setup.Sampling, step: int,
                  log: Callable[[str], None] = print, store: dict | None = None) -> StepBatch:
    """Draw generation batches until prompts_per_step groups pass the filter (or the cap is hit). store: --replay's
    (replay), updated with every batch's successes."""
    want = cfg.prompts_per_step
    kept: list[Group] = []
    rows: list[dict] = []
    drawn = passed = gen = 0
    while True:
        problems = stream.draw(cfg.gen_batch_size or want)  # the same prompts on every rank (same seed, position)
        groups = rollout(engine, problems, tokenizer, reward_fn, cfg, step, gen)
        if store is not None:
            replay(groups, store)
            remember(store, [row for g in groups for row in g.rows])
        gen += 1
        drawn += len(groups)
        if cfg.dynamic_sampling:
            # group g = the g-th prompt of this generation batch (a prompt drawn twice is two groups)
            metric = [float(v) for g in groups for v in (g.accs if cfg.filter_metric == "acc" else g.rewards)]
            gid = [i for i, g in enumerate(groups) for _ in g.accs]
            kept_ids = set(kept_group_ids(metric, gid))
            ok = [i in kept_ids for i in range(len(groups))]
        else:
            ok = [True] * len(groups)
        for g, good in zip(groups, ok):
            passed += good
            if good and len(kept) < want:  # like verl: surplus groups of the last batch are not trained on
                kept.append(g)
                for x in g.rows:
                    x["kept"] = True
            rows += g.rows
        if len(kept) >= want:
            return StepBatch(kept, gen, drawn, passed, rows, capped=False)
        if cfg.max_gen_batches and gen >= cfg.max_gen_batches:
            log(f"step {step}: --max-gen-batches {cfg.max_gen_batches} reached with {len(kept)} of {want} "
                f"prompts kept; this step trains on {len(kept)} prompts (capped 1 in metrics.jsonl)")
            return StepBatch(kept, gen, drawn, passed, rows, capped=True)


# ---------------------------------------------------------------------------------------------------------
# The update and the step loop


def train_on_batch(model, optimizer, groups: list[Group], update: UpdateConfig, loss: setup.Loss, pad_id: int,
                   device, ref=None) -> dict:
    """The step's updates: every response with its advantage, one optimiser update per --mini-batch groups, the loss
    of each micro-batch from micro_batch_loss (lib/train/update.rl_update). ref: the frozen KL reference."""
    seqs = [[Seq(g.prompt_ids, c.token_ids, a, rollout_logp=c.logprobs) for c, a in zip(g.completions, adv)]
            for g, adv in zip(groups, advantages(groups))]
    return rl_update(model, optimizer, seqs, update, micro_batch_loss(loss), pad_id, device, ref)


def run(cfg: setup.Config, reward_fn: RewardFn | None = None, engine_fn: Callable | None = None) -> int:
    r = setup.start(cfg, reward_fn, engine_fn)  # policy, engine, optimiser, prompts; resumed from the newest ckpt
    if r is None:
        return 0
    store = r.scan_rollouts(lambda rows: remember({}, rows)) if cfg.sampling.replay else None  # (--resume: rebuilt)
    for step in r.steps():
        t0 = time.time()
        batch = collect_batch(r.engine, r.stream, r.tok, r.verifier, cfg.sampling, step, store=store)
        r.record(batch.rows)  # rollouts.jsonl
        t_gen = time.time() - t0
        r.engine_sleep()  # vLLM --sleep-mode: the engine's GPU memory goes to the update
        stats = train_on_batch(r.model, r.optimizer, batch.groups, cfg.update, cfg.loss, r.tok.pad_token_id,
                               r.device, r.ref)
        if store is not None:
            stats["replayed"] = sum(g.replayed for g in batch.groups)  # stored successes trained on this step
        r.end_step(step, batch, stats, t_gen, t0)  # weights into the engine, lr, metrics row, checkpoint
    r.finish()
    return 0


def get_args(argv=None) -> setup.Config:
    return setup.get_args(argv, doc=__doc__, losses=LOSSES)


def main(argv=None, *, reward_fn: RewardFn | None = None, engine_fn: Callable | None = None):
    """`reward_fn` replaces the verifier and `engine_fn(model, tokenizer, model_path)` the rollout engine:
    hooks for tests and experiments; the command line never sets them. Under torchrun every rank runs this."""
    cfg = get_args(argv)
    distributed = dist.init()  # False without torchrun: nothing below touches torch.distributed then
    try:
        with dist.quiet_unless_main():
            return run(cfg, reward_fn, engine_fn)
    finally:
        if distributed:
            dist.teardown()


if __name__ == "__main__":
    cli.run_main(main)
