"""logprob_check.py — the chunked LM head (lib/train/modeling.token_logprobs) against the full logits, on a device.

One PASS / FAIL line each:
  fp32        log-probs, entropies and gradients equal the full-logits reference (1e-5 / 1e-4; TF32 off)
  bf16        under bf16 autocast, log-probs within bf16's resolution of the reference computed the same way
  memory T=N  one forward + backward of the log-prob step at Qwen2.5's vocabulary (152,064) and hidden size (3584):
              transient memory of the chunked head vs the full logits, against the bound of 1/4 of one fp32 [T, V]
              tensor. On CUDA: torch.cuda.max_memory_allocated (what the allocator really held); elsewhere the
              meta-device count of lib/train/memcount.py (tensor bytes, nothing allocated).

    python scripts/logprob_check.py --device cuda          # scripts/gpu_check.sh runs this
    python scripts/logprob_check.py --device cpu --tokens 512 --hidden 64     # a smoke run (the test suite's)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `lib` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

V = 152_064


def tiny_model(device):
    from lib.worlds import toy

    return toy.make_model(toy.make_tokenizer(), seed=0).to(device)


def reference(model, ids, attn):
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    z = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].float()
    logp = torch.log_softmax(z, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    ent = torch.distributions.Categorical(logits=z.detach()).entropy()
    pad = torch.zeros(ids.shape[0], 1, device=ids.device)
    return torch.cat([pad, logp], 1), torch.cat([pad, ent], 1)


def check_equal(device) -> list[tuple[str, bool, str]]:
    from lib.train import modeling

    out = []
    torch.backends.cuda.matmul.allow_tf32 = False
    model = tiny_model(device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (4, 300), generator=g).to(device)
    attn = torch.ones_like(ids)
    attn[1, 250:] = 0
    w = torch.randn(ids.shape, generator=g).to(device)
    old = modeling.LOGPROB_CHUNK
    modeling.LOGPROB_CHUNK = 100  # chunks that cut rows
    try:
        ref_lp, ref_ent = reference(model, ids, attn)
        model.zero_grad()
        (ref_lp * w * attn).sum().backward()
        ref_g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        lp, ent = modeling.token_logprobs(model, ids, attn, with_entropy=True)
        model.zero_grad()
        (lp * w * attn).sum().backward()
        d_lp, d_ent = (lp - ref_lp).abs().max().item(), (ent - ref_ent).abs().max().item()
        d_g = max(((p.grad - ref_g[n]).abs().max() / ref_g[n].abs().max().clamp(min=1e-12)).item()
                  for n, p in model.named_parameters() if p.grad is not None)
        out.append(("fp32: log-probs, entropies, gradients = full logits", d_lp < 1e-5 and d_ent < 1e-4 and d_g < 1e-4,
                    f"max |d logp| {d_lp:.1e}, |d entropy| {d_ent:.1e}, relative |d grad| {d_g:.1e}"))
        if device.type == "cuda" or device.type == "cpu":
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                ref_b, _ = reference(model, ids, attn)
                lp_b = modeling.token_logprobs(model, ids, attn)
            d_b = (lp_b - ref_b).abs().max().item()
            out.append(("bf16 autocast: log-probs = the model's own bf16 head", d_b < 5e-2, f"max |d logp| {d_b:.1e}"))
    finally:
        modeling.LOGPROB_CHUNK = old
    return out


def check_memory(device, tokens: list[int], H: int) -> list[tuple[str, bool, str]]:
    from lib.train.memcount import head_step_peak

    out = []
    for T in tokens:
        tv = T * V * 4
        on = device if device.type == "cuda" else "meta"  # (elsewhere: counted on the meta device, allocating nothing)
        part = head_step_peak(T, V, H, chunked=True, device=on)
        full = head_step_peak(T, V, H, chunked=False, device=on)
        how = "CUDA allocator" if device.type == "cuda" else "meta-device count"
        out.append((f"memory T={T}: chunked head <= 1/4 of one fp32 [T, V]", part <= tv / 4,
                    f"{part / 2**30:.2f} GiB chunked vs {full / 2**30:.2f} GiB full logits ({part / full:.3f}x); "
                    f"[T, V] fp32 = {tv / 2**30:.2f} GiB ({how})"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda / cpu")
    p.add_argument("--tokens", default="4096,16384", help="sequence lengths of the memory rows")
    p.add_argument("--hidden", type=int, default=3584, help="hidden size of the memory rows (Qwen2.5-Math-7B: 3584)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = check_equal(device) + check_memory(device, [int(t) for t in args.tokens.split(",")], args.hidden)
    for name, ok, detail in rows:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return 0 if all(ok for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
