"""The embedded toy world: a synthetic verifiable math task, a tiny Qwen2 model and its tokenizer.

No machine here can download a model or a dataset, so the project makes its own. Everything is generated
deterministically from a seed and cached under `runs/toy/` (or $RLOOP_TOY_DIR):

  data/train.jsonl  RL prompts: chains of 3-5 one-digit additions / subtractions (levels 2-4)
  data/test.jsonl   held-out problems from the same distribution
  data/ood.jsonl    harder, out of distribution: longer chains of 6 operations (level 5)
  data/probe.jsonl  a task family RL never trains on (a*b+c) - it measures forgetting
  data/gold.jsonl   gold step-by-step solutions (levels 1-5 + probe family) for the warm start
  base/             tiny Qwen2 warm-started by SFT on gold.jsonl (lib/train/sft.py, the code consolidate.py uses)

A problem and its gold solutions, in the two strategies (STRATEGIES) the gold data mixes half and half:
  Compute 7+5-3+8.    left to right:  7+5=12       regrouped:  7+5+8-3
                                      12-3=9                   7+5=12
                                      9+8=17                   12+8=20
                                      Answer: 17               20-3=17
                                                               Answer: 17
strategy(response) names the one a response is written in, from its text alone, so the diversity of successful
solutions (the paper's mechanism) can be counted exactly. The files use DAPO-Math-17k's schema, so the toy
exercises the same loader as the real world. The base model is deliberately *partial*: its SFT budget is small,
so long chains are often wrong - the regime in which RL has something to learn and RLoop's hard-problem filter
has something to keep - and the OOD split is hard but off the floor (base avg@16 0.113, pass@16 0.78; README).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import time
from pathlib import Path

import torch

from lib.run.cli import atomic_write_json, atomic_write_text

TOY_VERSION = 6  # bump when the task, tokenizer, model or recipe below changes: the cache key includes it
ROOT = Path(__file__).resolve().parents[2]  # the repo root (this file is lib/worlds/toy.py)

# --- the task --------------------------------------------------------------------------------------------
# A chain of one-digit additions / subtractions; its level is its number of operations. Each step is easy,
# but errors compound along the chain: long chains are hard, which gives a spread of per-problem success.
LEVELS = {1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7}  # level -> operations. RL trains on 2-4; 5 is OOD.
SPLITS = {  # split -> (how many problems, chain levels, family: chain / mul / mix = 3 chain : 1 mul)
    "train": (512, (2, 3, 4, 4), "chain"),  # level 4 drawn twice as often: the hard tail RLoop feeds on
    "test": (256, (2, 3, 4, 4), "chain"),
    "ood": (256, (5,), "chain"),  # longer than any RL prompt; gold holds some, so the base is off the floor
    "probe": (128, (), "mul"),
    "gold": (6000, (1, 2, 3, 4, 5), "mix"),
}
HELD_OUT = ("test", "ood", "probe")


def chain_problem(rng: random.Random, level: int, how: str = "left") -> tuple[str, str, str]:
    """(problem, answer, gold solution) for a chain of one-digit + / - with every running total >= 0, solved
    by strategy `how` (STRATEGIES). The random draws do not depend on `how`: the same rng state gives the same
    problem under either strategy."""
    acc = rng.randint(0, 9)
    expr, terms = str(acc), [("+", acc)]
    for _ in range(LEVELS[level]):
        b = rng.randint(1, 9)
        op = "-" if b <= acc and rng.random() < 0.4 else "+"
        expr += f"{op}{b}"
        terms.append((op, b))
        acc = acc + b if op == "+" else acc - b
    return f"Compute {expr}.", str(acc), solve_chain(terms, how)


def solve_chain(terms: list[tuple[str, int]], how: str) -> str:
    """The written solution of a chain (its terms in problem order, the first one with '+').
    left:  running totals in problem order, one operation per line
    group: first the chain regrouped (every added term, then every subtracted one) on a line of its own,
           then the running totals of that order. Its totals never go below the answer, so never below 0."""
    if how == "group":
        terms = [t for t in terms if t[0] == "+"] + [t for t in terms if t[0] == "-"]
    acc, lines = terms[0][1], []
    if how == "group":
        lines.append(str(acc) + "".join(f"{op}{b}" for op, b in terms[1:]))
    for op, b in terms[1:]:
        new = acc + b if op == "+" else acc - b
        lines.append(f"{acc}{op}{b}={new}")
        acc = new
    return "\n".join(lines) + f"\nAnswer: {acc}"


# A response's strategy, from its written form alone (no problem needed): the first line of a left-to-right
# solution is one operation with its result ("7+5=12"); a grouped one opens with the regrouped chain, no "="
# ("7+5+8-3"). Anything else (the probe family's "a*b=c", an empty or garbled response) has none.
STRATEGIES = ("left", "group")
_LEFT_FIRST = re.compile(r"\d+[+-]\d+=\d+")
_GROUP_FIRST = re.compile(r"\d+(?:[+-]\d+)+")


def strategy(response: str) -> str | None:
    """The strategy ('left' / 'group') a toy response is written in, or None: a pure function of the text,
    so the diversity of successful solutions can be counted exactly (lib/lab/stats.entropy of the labels)."""
    lines = response.strip().splitlines()
    first = lines[0].strip() if lines else ""
    if _LEFT_FIRST.fullmatch(first):
        return "left"
    if _GROUP_FIRST.fullmatch(first):
        return "group"
    return None


def mul_problem(rng: random.Random) -> tuple[str, str, str]:
    """The probe family: a one-digit product plus a one-digit number (a skill RL never trains)."""
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 9)
    return f"Compute {a}*{b}+{c}.", str(a * b + c), f"{a}*{b}={a * b}\n{a * b}+{c}={a * b + c}\nAnswer: {a * b + c}"


def is_held_out(problem: str) -> bool:
    """A fixed quarter of the problem space (by a hash of its text) is reserved for evaluation: train and gold
    never contain it, so test/ood/probe accuracy measures generalisation, not recall."""
    return hashlib.sha1(problem.encode("utf-8")).digest()[0] % 4 == 0


def make_split(name: str, seed: int) -> list[dict]:
    """Rows in DAPO-Math-17k's schema; problems are unique within a split (gold may repeat: it is SFT data)."""
    count, levels, family = SPLITS[name]
    rng = random.Random(f"{seed}-{name}")
    rows, seen = [], set()
    while len(rows) < count:
        fam = family if family != "mix" else ("mul" if rng.random() < 0.25 else "chain")
        level = rng.choice(levels) if fam == "chain" else 0  # level 0: the multiplication family
        # gold mixes the strategies half and half, so the base model writes both; elsewhere the solution is
        # only a reference (nothing trains on it), written left to right
        how = rng.choice(STRATEGIES) if name == "gold" else "left"
        problem, answer, solution = chain_problem(rng, level, how) if fam == "chain" else mul_problem(rng)
        if is_held_out(problem) != (name in HELD_OUT) or (name != "gold" and problem in seen):
            continue
        seen.add(problem)
        rows.append({
            "data_source": f"toy-{fam}",
            "prompt": [{"role": "user", "content": problem}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": answer},
            "extra_info": {"index": f"{name}-{len(rows):05d}", "level": level, "solution": solution},
        })
    return rows


# --- tokenizer and model ---------------------------------------------------------------------------------
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's pre-tokenisation pattern: the saved tokenizer must behave the same whether transformers loads its
# tokenizer.json as is (4.x) or rebuilds a Qwen2Tokenizer from its vocab (5.x).
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501
CHAT_TEMPLATE = (  # Qwen's ChatML layout, so real and toy prompts look alike
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MODEL_CONFIG = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=True)


def make_tokenizer():
    """A byte-level tokenizer laid out like Qwen2's, with no merges: one token per byte, so any text encodes
    (LaTeX, Unicode, NUL...) and nothing is ever unknown; the toy's ASCII is one token per character."""
    from tokenizers import pre_tokenizers

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 printable stand-ins for bytes
    return byte_level_tokenizer({t: i for i, t in enumerate(SPECIALS + byte_chars)}, SPECIALS,
                                eos="<|im_end|>", pad="<|endoftext|>")


def byte_level_tokenizer(vocab: dict[str, int], specials: list[str], eos: str, pad: str):
    """A merge-free byte-level BPE over `vocab` (token -> id; it holds the 256 byte characters and `specials`) with
    Qwen2's pre-tokenisation, byte-level decoding and the ChatML template: the toy's tokenizer, and the rehearsal's
    Qwen2.5-sized miniature (scripts/miniature.py)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, pad_token=pad,
                                  clean_up_tokenization_spaces=False)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tokenizer(tok, folder) -> None:
    """Save, naming Qwen2Tokenizer as the class so every transformers version (and vLLM) loads it alike."""
    tok.save_pretrained(folder)
    cfg_path = Path(folder) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg_path.write_text(json.dumps(cfg, indent=2))


def make_model(tokenizer, seed: int):
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, **MODEL_CONFIG)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
                                               pad_token_id=tokenizer.pad_token_id)
    return model


# --- the cache -------------------------------------------------------------------------------------------
# The warm-start recipe. Its budget is the knob that makes the base "partial" (see module docstring).
BASE_SFT = dict(steps=380, batch_size=64, lr=3e-3, warmup=30, weight_decay=0.1, seed=0)


def toy_dir(seed: int = 0) -> Path:
    root = Path(os.environ.get("RLOOP_TOY_DIR", ROOT / "runs" / "toy"))
    return root / f"v{TOY_VERSION}-seed{seed}"


def data_path(split: str, seed: int = 0) -> Path:
    """Path of a toy split, generating the data files on first use."""
    d = toy_dir(seed) / "data"
    if not (d / "DONE").exists():  # (writes are atomic and deterministic: concurrent first runs agree)
        for name in SPLITS:
            rows = make_split(name, seed)
            atomic_write_text(d / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        atomic_write_text(d / "DONE", "ok\n")
    return d / f"{split}.jsonl"


def ensure_base(seed: int = 0, quiet: bool = False, **overrides) -> Path:
    """The toy base model folder, building it (once) if it isn't cached."""
    out = toy_dir(seed) / "base"
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".build.lock", "w") as lock:  # concurrent first runs build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "config.json").exists():
            return out
        return build_base(out, seed=seed, quiet=quiet, **overrides)


def build_base(out: Path, seed: int = 0, quiet: bool = False, **overrides) -> Path:
    """Warm-start a fresh tiny Qwen2 on gold solutions with the project's SFT code, and save it."""
    from transformers import AutoTokenizer

    from lib.run.records import Trajectory
    from lib.train import sft
    from lib.train.modeling import save_policy

    t0 = time.time()
    torch.manual_seed(seed)
    # save, then reload the tokenizer: the toy trains with exactly the class every later stage will load
    save_tokenizer(make_tokenizer(), out.parent / "tokenizer")
    tok = AutoTokenizer.from_pretrained(out.parent / "tokenizer")
    model = make_model(tok, seed)
    gold = []
    with open(data_path("gold", seed), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            prompt = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
            gold.append(Trajectory(r["extra_info"]["index"], prompt, r["extra_info"]["solution"], 1.0, True,
                                   ground_truth=r["reward_model"]["ground_truth"], source="gold"))
    cfg = sft.SFTConfig(**{**BASE_SFT, **overrides})
    if not quiet:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"building the toy base model: {n_params / 1e6:.2f}M params, {len(gold)} gold solutions, "
              f"{cfg.steps} SFT steps -> {out}")
    examples = sft.tokenize(tok, gold, append_eos=True)
    sft.train(model, examples, cfg, tok.pad_token_id, sft.nll_loss, progress=not quiet)
    model.eval()
    save_policy(model, tok, out)
    atomic_write_json(out.parent / "base_build.json",
                      {"seconds": round(time.time() - t0, 1), "sft": cfg.__dict__, "toy_version": TOY_VERSION})
    if not quiet:
        print(f"toy base model ready in {time.time() - t0:.0f}s")
    return out


BENCHMARKS = ("test", "ood", "probe")  # what '--benchmarks toy' / '--eval-benchmarks toy' evaluate on


def resolve(spec: str, kind: str) -> str:
    """A stage flag's 'toy' -> the toy's files; any other value is returned unchanged. The stages call this
    where they first use the flag (lib/run/data and lib/train/modeling know nothing of the toy):
      kind 'model'       the toy base model folder (built once, then cached: minutes on first use)
      kind 'data'        the train split's JSONL
      kind 'benchmarks'  'test=PATH,ood=PATH,probe=PATH' (the --benchmarks / --eval-benchmarks form)"""
    if spec != "toy":
        return spec
    if kind == "model":
        return str(ensure_base())
    if kind == "data":
        return str(data_path("train"))
    if kind == "benchmarks":
        return ",".join(f"{s}={data_path(s)}" for s in BENCHMARKS)
    raise ValueError(f"unknown kind {kind!r} (model, data or benchmarks)")


if __name__ == "__main__":
    # python -m lib.worlds.toy   builds the toy base (if not cached); scripts/toy_base_report.py measures it
    print(ensure_base())
