"""Losses through the LM head a chunk of positions at a time equal those from all logits at once
(the model's own forward), labels from the data or sampled from the model, and the chunked pass
never holds every position's logits."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaForCausalLM

from pretrace.influence.capture import _row_losses, capture
from pretrace.inputs.batching import collate
from pretrace.model.adapter import wrap_model
from pretrace.model.lm_head import _after_head, split_at_head
from pretrace.planning.peak_memory import PeakAllocations
from pretrace.testing.tiny import ARCHITECTURES, random_sequences, tiny_model

CHUNK = 7  # several chunks per batch, the last one short


def captured_both_ways(lm, batch, labels):
    """(chunked, unchunked) captures; sampled labels drawn from generators seeded alike."""
    return [
        capture(lm, batch, labels, torch.Generator().manual_seed(11), chunk_tokens=chunk) for chunk in (CHUNK, None)
    ]


def assert_same_capture(chunked, whole, lm):
    """Equal to float rounding: the chunked head's gradient is computed in closed form, not by
    autograd, so an element of g may differ by a few float32 epsilons of the largest one."""
    torch.testing.assert_close(chunked.losses, whole.losses, rtol=1e-5, atol=1e-5)
    for name in whole.a:
        torch.testing.assert_close(chunked.a[name], whole.a[name], rtol=1e-5, atol=1e-6)
        pairs = [(chunked.g[name], whole.g[name])]
        pairs.append((chunked.per_example_gradients(name), whole.per_example_gradients(name)))
        for got, expected in pairs:
            atol = 1e-6 * max(1.0, float(expected.abs().max()))
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("labels", ["data", "sampled"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chunked_losses_equal_unchunked(arch, labels):
    """Every linear layer but the head, a padded batch of 4 with 4..20 positions each (Cohere's
    logit_scale applied after the head)."""
    lm = wrap_model(tiny_model(arch), layers=[r"^(?!lm_head)"], device="cpu")
    assert split_at_head(lm.model) is not None
    batch = collate(random_sequences(4, min_len=5, max_len=20, seed=2), pad_id=0)
    chunked, whole = captured_both_ways(lm, batch, labels)
    assert_same_capture(chunked, whole, lm)


def test_sampled_labels_are_not_the_data():
    lm = wrap_model(tiny_model("llama"), device="cpu")
    batch = collate(random_sequences(4, seed=2), pad_id=0)
    data, sampled = capture(lm, batch, "data"), capture(lm, batch, "sampled", torch.Generator().manual_seed(1))
    assert not torch.allclose(data.losses, sampled.losses)


def test_sampled_labels_follow_the_predicted_distribution():
    """Each drawn label's NLL names it (the probabilities differ); over 20000 rows the labels'
    frequencies are the softmax's within 4 standard errors."""
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).repeat(20_000, 1)
    probs = torch.softmax(logits[0].double(), dim=0)
    nll = _row_losses(logits, torch.zeros(20_000, dtype=torch.long), torch.rand(20_000, generator=torch.Generator()))
    drawn = (nll[:, None].double() - (-probs.log())[None, :]).abs().argmin(dim=1)
    frequencies = torch.bincount(drawn, minlength=4).double() / 20_000
    assert ((frequencies - probs).abs() < 4 * (probs * (1 - probs) / 20_000).sqrt()).all(), (frequencies, probs)


def test_a_soft_capped_head_is_chunked_exactly():
    """Gemma 2's final_logit_softcapping is applied after the head, in every chunk."""
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=0.5,  # small enough to bend every logit
    )
    lm = wrap_model(Gemma2ForCausalLM(config).eval(), device="cpu")
    assert split_at_head(lm.model) is not None
    batch = collate(random_sequences(3, seed=4), pad_id=0)
    assert_same_capture(*captured_both_ways(lm, batch, "sampled"), lm)


def test_the_head_gradient_in_closed_form_is_autograds():
    """Cohere's scale, Granite's divisor and Gemma's soft cap at once: the closed-form backward
    of what follows the output embedding equals autograd's."""
    family = nn.Module()
    family.logit_scale = 0.25
    family.config = SimpleNamespace(logits_scaling=3.0, final_logit_softcapping=0.5)
    after, backward = _after_head(family)
    product = (4 * torch.randn(6, 50, dtype=torch.float64)).requires_grad_(True)
    grad = torch.randn(6, 50, dtype=torch.float64)
    after(product).backward(grad)
    torch.testing.assert_close(backward(product.detach(), grad.clone()), product.grad)


class AdaptedHead(nn.Linear):
    """An output embedding that is not a plain nn.Linear (as a quantized or adapted one is not)."""


@pytest.mark.parametrize("labels", ["data", "sampled"])
def test_a_head_of_unknown_gradient_is_chunked_under_checkpoints(labels):
    model = tiny_model("llama")
    head = AdaptedHead(model.lm_head.in_features, model.lm_head.out_features, bias=False)
    head.weight = model.lm_head.weight
    model.lm_head = head
    lm = wrap_model(model, layers=["mlp"], device="cpu")
    split = split_at_head(lm.model)
    assert split is not None and split.linear_head_weight is None
    batch = collate(random_sequences(3, min_len=10, max_len=20, seed=4), pad_id=0)
    assert_same_capture(*captured_both_ways(lm, batch, labels), lm)


class DoubledLogits(LlamaForCausalLM):
    """A family that transforms its logits in a way the split does not know."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = 2 * out.logits
        return out


def test_a_model_whose_head_cannot_be_reproduced_is_not_split():
    model = DoubledLogits(tiny_model("llama").config).eval()
    assert split_at_head(model) is None
    lm = wrap_model(model, device="cpu")
    batch = collate(random_sequences(2, seed=4), pad_id=0)
    chunked, whole = captured_both_ways(lm, batch, "data")  # both from the model's own logits
    assert torch.equal(chunked.losses, whole.losses)


def test_a_tracked_head_sees_one_call():
    lm = wrap_model(tiny_model("llama"), layers=["lm_head", "mlp"], device="cpu")
    batch = collate(random_sequences(3, min_len=10, max_len=20, seed=4), pad_id=0)
    assert_same_capture(*captured_both_ways(lm, batch, "data"), lm)


def test_the_chunked_pass_never_holds_every_positions_logits():
    """A 20000-token vocabulary and 256 predicted positions: one float32 copy of all logits is
    20 MB (the unchunked pass holds three: logits, log-softmax, gradient); the chunked pass, 8
    positions at a time, peaks below a quarter of one copy (were a chunk's logits or softmax kept
    for the backward pass rather than freed once its hidden states' gradient is known, it would
    hold every chunk's: above one copy)."""
    lm = wrap_model(tiny_model("llama", vocab_size=20_000, context=128), device="cpu")
    batch = collate(random_sequences(4, vocab_size=20_000, min_len=65, max_len=65, seed=4), pad_id=0)
    peaks = {}
    for chunk in (8, None):
        with PeakAllocations() as measured:
            capture(lm, batch, "data", chunk_tokens=chunk)
        peaks[chunk] = measured.peak
    logits = 4 * 256 * 20_000
    assert peaks[8] < logits / 4 and peaks[None] > 2 * logits, (peaks, logits)
