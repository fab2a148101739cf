"""The vLLM weight push: after sync_weights, vLLM decodes what the updated policy decodes (a GPU, or vLLM's CPU build).

    python scripts/vllm_sync_check.py                   # builds a small toy-architecture model (no download)
    python scripts/vllm_sync_check.py --sleep           # ColocatedVLLM --sleep-mode: sleep, update, wake, push
    python scripts/vllm_sync_check.py --model DIR       # any Qwen2-family folder
    python scripts/vllm_sync_check.py --dry-run         # no vllm: build, perturb, HF greedy decodes only

Steps: the model folder (given, or a random toy-architecture model with weights scaled up so its greedy decodes are not
degenerate); an in-process colocated engine (lib/engine/rollout.py) on it, in the trainer's dtype (bf16 on a GPU, fp32
on the CPU), and the same model in transformers; vLLM greedy-decodes a few prompts; the HF model's weights are perturbed
and pushed with sync_weights, twice, and vLLM decodes after each push. Each vLLM decode is checked by teacher forcing:
one HF forward over prompt + vLLM's tokens must make every vLLM token HF's greedy choice, up to a near-tie (its logit
within --tol standard deviations of the logits below the top one). PASS when (1) the decode before the pushes agrees
with the old weights, (2) each decode after a push agrees with the new weights, (3) the last one disagrees with the old
weights (the check can tell them apart) and (4) it differs from the decode before.

Prints one PASS / FAIL line; exit 0 / 1. Needs vllm (requirements-gpu.txt, or scripts/vllm_cpu_env.sh); --dry-run
runs the same checks with HF's own greedy decode standing in for vLLM's.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = ["<|im_start|>user\nCompute 1+2.<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nCompute 7*8+5.<|im_end|>\n<|im_start|>assistant\n",
           "The quick brown fox", "0 1 2 3 4 5"]


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="", help="model folder; empty = build a random toy-architecture model")
    p.add_argument("--max-new-tokens", type=int, default=24, help="greedy tokens per prompt")
    p.add_argument("--noise", type=float, default=0.5,
                   help="perturbation: each weight tensor gets Gaussian noise of this many times its own std")
    p.add_argument("--tol", type=float, default=0.05,
                   help="a decoded token may sit this many standard deviations of the logits below HF's top one "
                        "(bf16 kernels differ at near-ties)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="vLLM's share of GPU memory")
    p.add_argument("--seed", type=int, default=0, help="model init and perturbation seed")
    p.add_argument("--sleep", action="store_true",
                   help="--sleep-mode's order: sleep before each update, wake up and push after it")
    p.add_argument("--dry-run", action="store_true", help="skip everything that needs vllm")
    return p.parse_args(argv)


def build_model(out: Path, seed: int) -> Path:
    """The toy architecture (Qwen2, tied embeddings, byte tokenizer) with random weights, its matrices scaled
    up (x10, embeddings x3): at the default init the residual stream echoes the last input token forever."""
    from lib.train.modeling import save_policy
    from lib.worlds import toy

    tok = toy.make_tokenizer()
    model = toy.make_model(tok, seed=seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.mul_(3.0 if "embed_tokens" in name else 10.0 if p.dim() == 2 else 1.0)
    save_policy(model, tok, out)
    return out


def perturb(model, noise: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            std = p.float().std().item() if p.numel() > 1 else 1.0
            p.add_((torch.randn(p.shape, generator=g) * noise * std).to(p.device, p.dtype))


def prompt_ids(tok) -> list[list[int]]:
    return [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


@torch.no_grad()
def hf_greedy(model, tok, max_new: int) -> list[list[int]]:
    """HF's own greedy decode of each prompt, stopping at the model's stop tokens (the dry run's stand-in)."""
    from lib.train.modeling import stop_token_ids

    stops = set(stop_token_ids(model, tok))
    dev = next(model.parameters()).device
    out = []
    for ids in prompt_ids(tok):
        ids, new = torch.tensor([ids], device=dev), []  # [1, L]
        for _ in range(max_new):
            t = int(model(input_ids=ids).logits[0, -1].argmax())
            new.append(t)
            if t in stops:
                break
            ids = torch.cat([ids, torch.tensor([[t]], device=dev)], dim=1)
        out.append(new)
    return out


@torch.no_grad()
def forced_check(model, tok, decodes: list[list[int]], tol: float) -> tuple[int, int, list[str]]:
    """Teacher-force each decode through `model`: (tokens that are its exact argmax, tokens, offending
    positions). A token offends when its logit is more than tol * std(logits) below the top logit."""
    dev = next(model.parameters()).device
    exact, total, bad = 0, 0, []
    for i, (ids, new) in enumerate(zip(prompt_ids(tok), decodes)):
        if not new:
            continue
        x = torch.tensor([ids + new], device=dev)  # [1, L + T]
        logits = model(input_ids=x).logits[0, len(ids) - 1:len(ids) - 1 + len(new)].float()  # [T, V]
        target = torch.tensor(new, device=dev)
        gap = logits.max(-1).values - logits.gather(-1, target[:, None]).squeeze(-1)  # [T] >= 0
        limit = tol * logits.std(-1)  # [T]
        exact += int((gap == 0).sum())
        total += len(new)
        bad += [f"prompt {i} token {t}: {new[t]} is {float(gap[t]):.3f} below the top logit"
                for t in (gap > limit).nonzero().flatten().tolist()]
    return exact, total, bad


def main(argv=None) -> int:
    args = get_args(argv)
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="vllm-sync-") as tmp:
        folder = Path(args.model) if args.model else build_model(Path(tmp) / "model", args.seed)
        tok = AutoTokenizer.from_pretrained(folder)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
        old = copy.deepcopy(model)
        max_len = max(len(p) for p in prompt_ids(tok)) + args.max_new_tokens
        pushes = []  # (decode after a push, the weights pushed)
        if args.dry_run:
            before = hf_greedy(old, tok, args.max_new_tokens)
            for k in range(2):
                perturb(model, args.noise, args.seed + k)
                pushes.append((hf_greedy(model, tok, args.max_new_tokens), copy.deepcopy(model)))
        else:
            from lib.engine.rollout import ColocatedVLLM

            eng = ColocatedVLLM(str(folder), tok, max_model_len=max_len, dtype=str(dtype).removeprefix("torch."),
                                seed=args.seed, gpu_memory_utilization=args.gpu_memory_utilization,
                                sleep_mode=args.sleep)

            def greedy():
                return [g[0].token_ids for g in eng.generate(PROMPTS, n=1, max_new_tokens=args.max_new_tokens,
                                                             temperature=0.0)]

            before = greedy()
            for k in range(2):
                eng.sleep()  # (a no-op without --sleep)
                perturb(model, args.noise, args.seed + k)
                eng.wake_up()
                eng.sync_weights(model)
                pushes.append((greedy(), copy.deepcopy(model)))
            eng.close()

    e1, n1, bad1 = forced_check(old, tok, before, args.tol)
    problems = [f"before the push, vs the old weights: {b}" for b in bad1[:3]]
    e2 = n2 = 0
    for k, (decoded, weights) in enumerate(pushes):
        e, n, bad = forced_check(weights, tok, decoded, args.tol)
        e2, n2 = e2 + e, n2 + n
        problems += [f"after push {k + 1}, vs its weights: {b}" for b in bad[:3]]
    after = pushes[-1][0]
    _, _, stale = forced_check(old, tok, after, args.tol)
    if not stale:
        problems.append("the decode after the push also fits the old weights (raise --noise: the check cannot "
                        "tell old from new)")
    if after == before:
        problems.append("the decodes did not change with the weights")
    if n1 == 0 or n2 == 0:
        problems.append("no tokens decoded")
    who = "HF (dry run: no vLLM)" if args.dry_run else "vLLM"
    line = (f"{who} greedy == HF greedy (teacher-forced) on {e1}/{n1} tokens before and {e2}/{n2} after 2 pushes "
            f"(the rest within --tol {args.tol} std){' with sleep / wake' if args.sleep else ''}; {len(stale)} tokens "
            f"off under the old weights")
    print(("FAIL" if problems else "PASS") + " vllm_sync_check: " + line + "".join("; " + p for p in problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
