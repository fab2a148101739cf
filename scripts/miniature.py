"""miniature.py — a Qwen2.5-Math-7B-shaped miniature and DAPO-shaped data, for rehearsing the full-scale recipe on CPU.

What keeps the real sizes that matter, and what is shrunk:
  vocabulary     152,064 rows in the embedding and the LM head, as Qwen2.5-Math-7B's config (151,643 regular tokens,
                 then Qwen's 22 special tokens at their ids: <|endoftext|> 151643, <|im_start|> 151644,
                 <|im_end|> 151645, ...): the log-prob, sampling and memory paths meet the real vocabulary
  special tokens eos_token <|endoftext|> (the tokenizer's), chat turns in ChatML ending with <|im_end|>, a
                 generation config that stops on both: RFT must train on the stop token the policy sampled
  context        max_position_embeddings 256, shorter than a DAPO prompt + response here, as Qwen2.5-Math-7B's 4096
                 is shorter than DAPO's 2048 + 20480: the recipe's --max-model-len is exercised
  untied head    tie_word_embeddings false, as the 7B
  shrunk         width 64, 2 layers, 2 heads of 32 / 1 KV head (~20M parameters, nearly all in the embedding and head);
                 a head size vLLM's CPU attention takes (32, 64, 80, ...), so the rehearsal runs on vLLM too
The regular tokens are the 256 byte-level characters (any text encodes, one token per byte) and filler entries the
model can sample but no text encodes to. The miniature is warm-started for a few seconds with the project's SFT on
answers "Answer: d<|im_end|>" (d a random digit), so it ends its turns with <|im_end|> and is right ~1 time in 10 on
the data below: a hard-problem regime for the filter, through the real DAPO reward.

Data: `train.parquet` in DAPO-Math-17k's schema (one chat message holding DAPO's instruction around the problem,
reward_model.ground_truth, extra_info.index; each problem repeated 3 times, as the real file repeats its rows) and
benchmarks in the plain {problem, answer} JSONL schema (evaluate.py adds DAPO's instruction).

    python scripts/miniature.py --out runs/rehearse/fixtures      # ~1 min on 2 cores; cached
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `lib` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VERSION = 3  # bump when anything below changes: a cached folder of another version is rebuilt
VOCAB_SIZE = 152_064  # Qwen2.5-Math-7B's config.vocab_size (the embedding's rows; the tokenizer has 151,665)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                 "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
FIRST_SPECIAL = 151_643  # <|endoftext|>'s id in Qwen2.5's vocabulary
CONTEXT = 256  # max_position_embeddings: shorter than prompt + response in the rehearsal
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)


def make_tokenizer(vocab_size: int = VOCAB_SIZE):
    """Qwen2.5's layout: 151,643 regular tokens (256 byte-level characters + filler), then the 22 specials. A smaller
    vocab_size (the test suite's fast variant) keeps the layout: fillers, then the specials, then padding rows."""
    from tokenizers import pre_tokenizers

    from lib.worlds.toy import byte_level_tokenizer

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    first = first_special(vocab_size)
    regular = byte_chars + [f"Ġw{i}" for i in range(first - len(byte_chars))]  # decodes to " w<i>"
    vocab = {t: i for i, t in enumerate(regular)}
    vocab.update({t: first + i for i, t in enumerate(QWEN_SPECIALS)})
    return byte_level_tokenizer(vocab, QWEN_SPECIALS, eos="<|endoftext|>", pad="<|endoftext|>")


def first_special(vocab_size: int) -> int:
    """<|endoftext|>'s id: Qwen2.5's 151643 at the real size; in a smaller vocabulary as many rows before the end."""
    return FIRST_SPECIAL - (VOCAB_SIZE - vocab_size)


def problems(n: int, seed: int) -> list[tuple[str, str]]:
    """n short problems with one-digit answers: 'What is the last digit of 47 + 85?' -> '2'."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        out.append((f"What is the last digit of {a} + {b}?", str((a + b) % 10)))
    return out


def write_train_parquet(path: Path, n: int = 16, repeats: int = 3, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lib.run.data import DAPO_TEMPLATE

    rows = []
    for i, (q, a) in enumerate(problems(n, seed)):
        row = {"data_source": "math_dapo", "prompt": [{"content": DAPO_TEMPLATE.format(problem=q), "role": "user"}],
               "ability": "MATH", "reward_model": {"ground_truth": a, "style": "rule-lighteval/MATH_v2"},
               "extra_info": {"index": f"mini-{i:04d}"}}
        rows += [row] * repeats
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_benchmark(path: Path, n: int, seed: int) -> None:
    path.write_text("".join(json.dumps({"id": f"b{seed}-{i}", "problem": q, "answer": a}) + "\n"
                            for i, (q, a) in enumerate(problems(n, seed))))


def build_model(out: Path, tok, seed: int = 0, sft_steps: int = 100, vocab_size: int = VOCAB_SIZE) -> None:
    """The miniature, warm-started on 'Answer: d<|im_end|>' answers to chat prompts (d random: right 1 in 10)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    from lib.run.records import Trajectory
    from lib.train import sft
    from lib.train.modeling import save_policy
    from lib.worlds.toy import save_tokenizer

    torch.manual_seed(seed)
    eos, eot = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    cfg = Qwen2Config(vocab_size=vocab_size, max_position_embeddings=CONTEXT, rope_theta=10000.0,
                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=eos, pad_token_id=eos, **SHAPE)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=[eos, eot], pad_token_id=eos)
    rng = random.Random(seed)
    gold = []
    for i, (q, _) in enumerate(problems(256, seed + 1)):
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        ids = tok(f"Answer: {rng.randint(0, 9)}", add_special_tokens=False)["input_ids"] + [eot]
        gold.append(Trajectory(f"g{i}", prompt, "", 1.0, True, response_ids=ids))
    cfg_sft = sft.SFTConfig(steps=sft_steps, batch_size=32, lr=1e-2, warmup=5, seed=seed)
    sft.train(model, sft.tokenize(tok, gold), cfg_sft, eos, sft.nll_loss, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()  # (no "Writing model shards" bar in the rehearsal's output)
    save_policy(model, tok, out)
    save_tokenizer(tok, out)  # (Qwen2Tokenizer as the class, as the toy's: every transformers version loads it)


def build(out: str | Path, seed: int = 0, vocab_size: int = VOCAB_SIZE, sft_steps: int = 100) -> Path:
    """Everything the rehearsal reads, under `out` (cached: rebuilt only for another VERSION or size)."""
    from lib.run.cli import atomic_write_text, replace_dir

    out = Path(out)
    key = f"{VERSION} vocab {vocab_size} sft {sft_steps} seed {seed}"
    if (out / "VERSION").is_file() and (out / "VERSION").read_text().strip() == key:
        return out
    tmp = out.with_name(f".{out.name}.tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = make_tokenizer(vocab_size)
    build_model(tmp / "model", tok, seed, sft_steps, vocab_size)
    write_train_parquet(tmp / "train.parquet", seed=seed)
    write_benchmark(tmp / "bench_a.jsonl", 6, seed + 10)
    write_benchmark(tmp / "bench_b.jsonl", 6, seed + 11)
    atomic_write_text(tmp / "VERSION", f"{key}\n")
    replace_dir(tmp, out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/rehearse/fixtures",
                   help="output folder (model/, train.parquet, bench_*.jsonl)")
    p.add_argument("--seed", type=int, default=0, help="weights, warm-start data and problems seed")
    p.add_argument("--vocab-size", type=int, default=VOCAB_SIZE,
                   help="embedding rows (Qwen2.5-Math-7B: 152064); smaller only for the test suite's fast variant")
    p.add_argument("--sft-steps", type=int, default=100, help="warm-start steps (100: a clean 'Answer: d<|im_end|>')")
    args = p.parse_args(argv)
    if args.vocab_size < 512:
        p.error("--vocab-size must be >= 512 (256 byte tokens + fillers + 22 specials)")
    print(build(args.out, args.seed, args.vocab_size, args.sft_steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
