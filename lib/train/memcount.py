"""Peak tensor memory of a computation, counted op by op, on any device ("meta" included: nothing is allocated);
and the log-prob step's transient memory at a given sequence length, vocabulary and hidden size, chunked LM head
against full logits (bench.py --sections memory, scripts/logprob_check.py, tests/test_chunked_logprobs.py).
"""
from __future__ import annotations

import torch


class LiveBytes:
    """Peak bytes of tensor storage alive at once inside the context, counted op by op through a dispatch mode
    (forward and backward: autograd runs its ops under the same mode). Works on any device, "meta" included,
    where nothing is allocated: a 16k-token x 152k-vocabulary step can be measured on a laptop. Counts tensor
    storage, not the allocator's caching or fragmentation (on a GPU, torch.cuda.max_memory_allocated is the
    real figure)."""

    def __enter__(self):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self
        self.live = self.peak = 0
        self._seen: dict[int, object] = {}

        def forget(key: int, nbytes: int) -> None:
            tracker.live -= nbytes
            tracker._seen.pop(key, None)

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        st = t.untyped_storage()
                        key = st._cdata  # one per storage: views and in-place results are not counted twice
                        if key not in tracker._seen:
                            nbytes = st.nbytes()
                            tracker._seen[key] = weakref.ref(st, lambda _r, k=key, n=nbytes: forget(k, n))
                            tracker.live += nbytes
                            tracker.peak = max(tracker.peak, tracker.live)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        return False


def head_step_peak(T: int, V: int, H: int, chunked: bool, chunk: int = 0, device="meta",
                   dtype=torch.float32) -> int:
    """Transient bytes of one forward + backward of the log-prob step over one sequence: final hidden states
    [1, T, H] (a leaf, standing in for the backbone's output) through the LM head [V, H] to log p and entropy, and
    back to the hidden states' and the head's gradients. Returns the peak live bytes minus what stays alive after
    it (those gradients: the model's own). chunked: lib/train/modeling.head_logprobs; else today's full-logits way
    (lib/train/modeling.logprobs_from_logits over lm_head(hidden)). On CUDA the figure is the allocator's
    (torch.cuda.max_memory_allocated: what it really held); elsewhere LiveBytes' count."""
    from lib.train import modeling

    class Head(torch.nn.Module):  # the two methods head_logprobs asks of a causal LM
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Linear(H, V, bias=False, device=device, dtype=dtype)

        def get_output_embeddings(self):
            return self.lm_head

    model = Head()
    hidden = torch.randn(1, T, H, device=device, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, V, (1, T), device=device)
    def step():
        if chunked:
            logp, ent = modeling.head_logprobs(model, hidden, targets, with_entropy=True, chunk=chunk)
        else:
            logp, ent = modeling.logprobs_from_logits(model.lm_head(hidden), targets, with_entropy=True)
        logp.sum().backward()

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()  # (the gradients stay allocated)
    with LiveBytes() as mem:
        step()
    return mem.peak - mem.live
