"""lib/train/modeling.token_logprobs against references computed here from the model's own logits with plain torch:
the log-prob of each token and the entropy explore.py logs (with_entropy=True), at temperature 1 and not,
for right- and left-padded batches. Tested only through the public signature
token_logprobs(model, input_ids, attention_mask, temperature, with_entropy)."""

import pytest
import torch
from torch.distributions import Categorical

from lib.train.modeling import pad_rows, token_logprobs
from lib.worlds import toy

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest) tiny models, shared 2-core box

ROWS = [[5, 17, 9, 30, 12, 8], [7, 21, 3], [11, 4, 26, 19]]  # different lengths: the batch needs padding


@pytest.fixture(scope="module")
def model():
    tok = toy.make_tokenizer()
    torch.manual_seed(0)
    m = toy.make_model(tok, seed=3).eval()
    with torch.no_grad():  # an untrained model is near-uniform; bigger weights give peaked and flat positions
        for p in m.parameters():
            p.mul_(4.0)
    return m


def reference(model, row: list[int], temperature: float):
    """(logp [T], entropy [T]) of one unpadded row, from model(...).logits with torch.distributions:
    position t (t >= 1) is scored by the distribution the logits at t - 1 give; position 0 is 0."""
    ids = torch.tensor([row])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # [T, V]
    dist = Categorical(logits=logits[:-1] / temperature)  # [T-1] distributions over V
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, dist.log_prob(ids[0, 1:])]), torch.cat([zero, dist.entropy()])


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_logprobs_and_entropy_match_a_plain_torch_reference(model, temperature, left):
    ids, attn = pad_rows(ROWS, pad_id=0, left=left)  # [3, 6]
    with torch.no_grad():
        logp, ent = token_logprobs(model, ids, attn, temperature, with_entropy=True)  # [3, 6] each
        logp_only = token_logprobs(model, ids, attn, temperature)
    assert logp.shape == ent.shape == ids.shape
    T = ids.shape[1]
    spread = []
    for j, row in enumerate(ROWS):
        want_logp, want_ent = reference(model, row, temperature)
        sl = slice(T - len(row), T) if left else slice(0, len(row))
        got_ent, got_logp = ent[j, sl].double(), logp[j, sl].double()
        # a row's first token has no prefix: 0 when the row starts the batch (right padding); left-padded, its
        # slot is scored from the padding before it (callers mask it as prompt), so compare from the next one
        first = 1 if left else 0
        assert torch.allclose(got_ent[first:], want_ent[first:], atol=1e-4), (j, got_ent, want_ent)
        assert torch.allclose(got_logp[first:], want_logp[first:], atol=1e-4), (j, got_logp, want_logp)
        assert torch.equal(logp_only[j, sl], logp[j, sl])  # with_entropy does not change the log-probs
        spread += want_ent[1:].tolist()
    # the check has teeth: the entropies are far from uniform (log V) and differ across positions
    V = model.config.vocab_size
    assert max(spread) - min(spread) > 0.5 and max(spread) < torch.log(torch.tensor(float(V))).item() - 0.5


def test_entropy_of_a_temperature_is_not_the_entropy_at_one(model):
    """Temperature is applied before the entropy: a sharper softmax has lower entropy at every position."""
    ids, attn = pad_rows(ROWS[:1], pad_id=0)
    with torch.no_grad():
        _, cold = token_logprobs(model, ids, attn, 0.5, with_entropy=True)
        _, hot = token_logprobs(model, ids, attn, 2.0, with_entropy=True)
    assert torch.all(cold[0, 1:] < hot[0, 1:])
