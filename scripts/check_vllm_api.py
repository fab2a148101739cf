"""Check that every vLLM name the project uses exists in vLLM 0.33.0, read from vLLM's own source (no import).

The names are the lists in tests/fake_vllm.py (the fake vLLM the CPU tests run against; a test there makes
sure the code passes no name outside them). Each is looked up by parsing vLLM's .py files:

  LLM_KWARGS               LLM.__init__'s parameters, else (through its **kwargs) an EngineArgs field
  LLM_METHODS              LLM's methods (its own or its mixins') and the parameter names passed to them
  SAMPLING_PARAMS_FIELDS   SamplingParams fields
  *_OUTPUT_FIELDS, LOGPROB_FIELDS   RequestOutput attributes, CompletionOutput / Logprob fields
  FINISH_REASONS           in v1's FINISH_REASON_STRINGS
  PROMPT_FIELDS            TokensPrompt keys
  ENV_VARS                 vllm/envs.py's variables
  HF_OVERRIDE_KEYS         keys vLLM derives the context limit from (derive_max_model_len_and_key)
  IMPORTS                  the modules and names the project imports
  QWEN2_STACKED            Qwen2's transformers -> fused-parameter name map, equal to the fake's
  CHILD_SEED               how child j of an n > 1 request is seeded (parallel_sampling.py)
  LOGPROBS_MODE            the logprobs_mode the engine asks for, one of ModelConfig's LogprobsMode values
  WORKER_METHODS           the worker methods called through LLM.collective_rpc, and their keywords
  PLATFORM_METHODS         vllm.platforms.current_platform's methods the project calls

    python scripts/check_vllm_api.py --src /path/to/unzipped-wheel     # or a site-packages with vllm
    python scripts/check_vllm_api.py                                    # installed vllm, else pip download

Prints one line per name (OK / MISSING, with where it looked) and exits 1 if any is missing. Not run in CI
(it needs the 336 MB wheel or an installed vllm).
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION = "0.33.0"


def fake_lists() -> dict:
    """The module-level constants of tests/fake_vllm.py, read as literals (no torch / pytest import)."""
    tree = ast.parse((ROOT / "tests" / "fake_vllm.py").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.isupper():
                try:
                    out[name] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return out


def find_source(src: str | None) -> Path:
    """The vllm package folder: --src (the package, or a folder holding it), else an installed vllm, else
    the 0.33.0 wheel downloaded with pip into a temporary folder and its .py files unzipped."""
    if src:
        p = Path(src)
        for cand in (p, p / "vllm"):
            if (cand / "entrypoints" / "llm.py").is_file():
                return cand
        sys.exit(f"error: --src {src}: no vllm package there (looked for vllm/entrypoints/llm.py)")
    spec = importlib.util.find_spec("vllm")  # finds the package without running its __init__
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    tmp = Path(tempfile.mkdtemp(prefix="vllm-src-"))
    print(f"no --src and no installed vllm: downloading vllm=={VERSION} into {tmp}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"vllm=={VERSION}", "-d", str(tmp)],
                   check=True)
    wheel = next(tmp.glob("vllm-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp / "src", [n for n in z.namelist() if n.startswith("vllm/") and n.endswith(".py")])
    return tmp / "src" / "vllm"


class Source:
    def __init__(self, pkg: Path):
        self.pkg, self._trees = pkg, {}

    def tree(self, rel: str) -> ast.Module | None:
        if rel not in self._trees:
            f = self.pkg / rel
            self._trees[rel] = ast.parse(f.read_text(), str(f)) if f.is_file() else None
        return self._trees[rel]

    def classes(self, name: str, under: str = "") -> list[tuple[str, ast.ClassDef]]:
        out = []
        for f in sorted((self.pkg / under).rglob("*.py")):
            rel = str(f.relative_to(self.pkg))
            if f"class {name}" not in f.read_text(errors="replace"):
                continue
            for node in ast.walk(self.tree(rel)):
                if isinstance(node, ast.ClassDef) and node.name == name:
                    out.append((rel, node))
        return out

    def cls(self, rel: str, name: str) -> ast.ClassDef | None:
        t = self.tree(rel)
        return next((n for n in ast.walk(t) if isinstance(n, ast.ClassDef) and n.name == name), None) if t else None


def fields(c: ast.ClassDef) -> dict[str, int]:
    """Annotated class attributes (dataclass / msgspec / TypedDict fields) -> line."""
    return {n.target.id: n.lineno for n in c.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def methods(c: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in c.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def params(fn) -> list[str]:
    a = fn.args
    return [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]


def mro(src: Source, rel: str, c: ast.ClassDef) -> list[tuple[str, ast.ClassDef]]:
    """The class and its bases found anywhere under vllm/entrypoints (mixins), depth first."""
    out, todo, seen = [], [(rel, c)], set()
    while todo:
        r, k = todo.pop(0)
        if k.name in seen:
            continue
        seen.add(k.name)
        out.append((r, k))
        for b in k.bases:
            name = b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else None
            if name:
                todo += src.classes(name, "entrypoints")[:1]
    return out


def check(src: Source, lists: dict) -> list[tuple[bool, str, str]]:
    res = []

    def add(ok, what, where):
        res.append((bool(ok), what, where))

    # LLM(...) keywords
    llm_rel = "entrypoints/llm.py"
    llm = src.cls(llm_rel, "LLM")
    init = methods(llm)["__init__"]
    eng_rel = "engine/arg_utils.py"
    eng = fields(src.cls(eng_rel, "EngineArgs"))
    has_kwargs = init.args.kwarg is not None
    for k in lists["LLM_KWARGS"]:
        if k in params(init):
            add(True, f"LLM({k})", f"LLM.__init__ parameter, {llm_rel}:{init.lineno}")
        elif has_kwargs and k in eng:
            add(True, f"LLM({k})", f"via **kwargs: EngineArgs field, {eng_rel}:{eng[k]}")
        else:
            add(False, f"LLM({k})", f"neither LLM.__init__ ({llm_rel}:{init.lineno}) nor EngineArgs ({eng_rel})")

    # LLM methods and their parameters
    chain = mro(src, llm_rel, llm)
    for m, args in lists["LLM_METHODS"].items():
        hit = next(((r, methods(k)[m]) for r, k in chain if m in methods(k)), None)
        if hit is None:
            add(False, f"LLM.{m}", "LLM and its bases: " + ", ".join(f"{k.name} ({r})" for r, k in chain))
            continue
        r, fn = hit
        add(True, f"LLM.{m}", f"{r}:{fn.lineno}")
        for a in args:
            add(a in params(fn), f"LLM.{m}({a})", f"{r}:{fn.lineno} parameters {params(fn)[1:]}")

    def field_check(rel, cname, names, label, extra=None):
        c = src.cls(rel, cname)
        if c is None:
            for n in names:
                add(False, f"{label}.{n}", f"no class {cname} in {rel}")
            return
        f = fields(c)
        if extra:
            f.update(extra(c))
        for n in names:
            add(n in f, f"{label}.{n}", f"{rel}:{f[n]}" if n in f else f"fields of {cname} in {rel}: {sorted(f)}")

    field_check("sampling_params.py", "SamplingParams", lists["SAMPLING_PARAMS_FIELDS"], "SamplingParams")

    def init_attrs(c):  # self.x = ... in __init__
        fn = methods(c).get("__init__")
        if fn is None:
            return {}
        return {t.attr: t.lineno for n in ast.walk(fn) if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}

    field_check("outputs.py", "RequestOutput", lists["REQUEST_OUTPUT_FIELDS"], "RequestOutput", init_attrs)
    field_check("outputs.py", "CompletionOutput", lists["COMPLETION_OUTPUT_FIELDS"], "CompletionOutput")
    field_check("logprobs.py", "Logprob", lists["LOGPROB_FIELDS"], "Logprob")
    tp = src.classes("TokensPrompt", "inputs")
    if tp:
        field_check(tp[0][0], "TokensPrompt", lists["PROMPT_FIELDS"], "TokensPrompt")
    else:
        add(False, "TokensPrompt", "no class TokensPrompt under vllm/inputs")

    # finish reasons
    rel = "v1/engine/__init__.py"
    fr = next(((n.lineno, ast.literal_eval(n.value)) for n in src.tree(rel).body if isinstance(n, ast.Assign)
               and any(isinstance(t, ast.Name) and t.id == "FINISH_REASON_STRINGS" for t in n.targets)), None)
    for r in lists["FINISH_REASONS"]:
        add(fr and r in fr[1], f"finish_reason {r!r}", f"{rel}:{fr[0]} FINISH_REASON_STRINGS {fr[1]}" if fr
            else f"no FINISH_REASON_STRINGS in {rel}")

    # environment variables
    env = {}
    for n in ast.walk(src.tree("envs.py")):
        if isinstance(n, ast.Dict):
            env.update({k.value: k.lineno for k in n.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)})
    for v in lists["ENV_VARS"]:
        add(v in env, f"env {v}", f"envs.py:{env[v]}" if v in env else "keys of vllm/envs.py's variable table")

    # hf_overrides keys that set the context limit
    rel = "transformers_utils/model_arch_config_convertor.py"
    fn = next((n for n in ast.walk(src.tree(rel)) if isinstance(n, ast.FunctionDef)
               and n.name == "derive_max_model_len_and_key"), None)
    keys = {n.value for n in ast.walk(fn) if isinstance(n, ast.Constant) and isinstance(n.value, str)} if fn else set()
    for k in lists["HF_OVERRIDE_KEYS"]:
        add(k in keys, f"hf_overrides {k!r} sets the context limit",
            f"{rel}:{fn.lineno} derive_max_model_len_and_key" if fn else f"no derive_max_model_len_and_key in {rel}")

    # imports
    for dotted in lists["IMPORTS"]:
        mod, name = dotted.rsplit(".", 1)
        parts = mod.split(".")[1:]
        rel = "/".join(parts) + ".py" if parts else "__init__.py"
        if parts and src.tree(rel) is None:
            rel = "/".join(parts) + "/__init__.py"
        t = src.tree(rel)
        found = None
        if t is not None:
            for n in ast.walk(t):
                if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name:
                    found = n.lineno
                elif isinstance(n, (ast.ImportFrom, ast.Import)) and any((a.asname or a.name) == name for a in n.names):
                    found = found or n.lineno
                elif isinstance(n, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == name for k in n.keys):
                    found = found or n.lineno  # vllm/__init__.py's lazy-import table
                elif (isinstance(n, ast.FunctionDef) and n.name == "__getattr__"
                      and any(isinstance(c, ast.Constant) and c.value == name for c in ast.walk(n))):
                    found = found or n.lineno  # a module attribute resolved lazily (vllm.platforms.current_platform)
        add(found, f"import {dotted}", f"{rel}:{found}" if found else f"vllm/{rel}")

    # Qwen2's name mapping
    rel = "model_executor/models/qwen2.py"
    got = None
    for n in ast.walk(src.tree(rel)):
        if isinstance(n, ast.keyword) and n.arg == "orig_to_new_stacked":
            got = (n.value.lineno, ast.literal_eval(n.value))
            break
    want = lists["QWEN2_STACKED"]
    add(got and got[1] == want, "Qwen2 orig_to_new_stacked == fake's QWEN2_STACKED",
        f"{rel}:{got[0]} {got[1]}" if got else f"no orig_to_new_stacked in {rel}")

    # child seeds of an n > 1 request
    rel = "v1/engine/parallel_sampling.py"
    seeds = [(n.lineno, ast.unparse(n.value)) for n in ast.walk(src.tree(rel)) if isinstance(n, ast.Assign)
             and any(isinstance(t, ast.Attribute) and t.attr == "seed" for t in n.targets)]
    hit = next((s for s in seeds if s[1] == lists["CHILD_SEED"]), None)
    add(hit, f"child seed = {lists['CHILD_SEED']}", f"{rel}:{hit[0]}" if hit else f"{rel}: seed assignments {seeds}")

    # what the returned log-probs are: the mode the engine asks for is one of LogprobsMode's values
    rel = "config/model.py"
    lit = next((n for n in src.tree(rel).body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "LogprobsMode" for t in n.targets)), None)
    modes = [c.value for c in ast.walk(lit.value) if isinstance(c, ast.Constant)] if lit is not None else []
    add(lists["LOGPROBS_MODE"] in modes, f"logprobs_mode {lists['LOGPROBS_MODE']!r}",
        f"{rel}:{lit.lineno} LogprobsMode {modes}" if lit is not None else f"no LogprobsMode in {rel}")

    # worker methods reached through LLM.collective_rpc: on the GPU worker, and the model runner's parameters
    wrel, rrel = "v1/worker/gpu_worker.py", "v1/worker/gpu_model_runner.py"
    worker, runner = src.cls(wrel, "Worker"), src.cls(rrel, "GPUModelRunner")
    for m, kws in lists["WORKER_METHODS"].items():
        fw = methods(worker).get(m) if worker else None
        add(fw, f"Worker.{m}", f"{wrel}:{fw.lineno}" if fw else f"methods of Worker in {wrel}")
        fr = methods(runner).get(m) if runner else None
        for k in kws:
            add(fr and k in params(fr), f"Worker.{m}({k})",
                f"{rrel}:{fr.lineno} GPUModelRunner.{m} parameters {params(fr)[1:]}" if fr else f"no {m} in {rrel}")

    # vllm.platforms.current_platform's methods
    prel = "platforms/interface.py"
    plat = src.cls(prel, "Platform")
    for m in lists["PLATFORM_METHODS"]:
        fn = methods(plat).get(m) if plat else None
        add(fn, f"current_platform.{m}()", f"{prel}:{fn.lineno}" if fn else f"methods of Platform in {prel}")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", help="an unzipped vllm wheel or a site-packages holding vllm (default: the installed "
                                 "vllm, else download the 0.33.0 wheel with pip)")
    args = p.parse_args(argv)
    pkg = find_source(args.src)
    version = ""
    vf = pkg / "_version.py"
    if vf.is_file():
        for n in ast.parse(vf.read_text()).body:  # __version__ = '0.33.0' (annotated or not)
            tgt = n.target if isinstance(n, ast.AnnAssign) else n.targets[0] if isinstance(n, ast.Assign) else None
            if isinstance(tgt, ast.Name) and tgt.id == "__version__" and isinstance(n.value, ast.Constant):
                version = n.value.value
    print(f"vllm source: {pkg} (version {version or 'unknown'}; expected {VERSION})")
    res = check(Source(pkg), fake_lists())
    for ok, what, where in res:
        print(f"{'OK     ' if ok else 'MISSING'} {what:55s} {where}")
    bad = sum(not ok for ok, _, _ in res)
    print(f"{len(res) - bad} OK, {bad} missing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
