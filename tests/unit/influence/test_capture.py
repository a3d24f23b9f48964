"""Captured (a, g) give exactly the per-example gradients of a plain autograd loop."""

import pytest
import torch

from pretrace.errors import InputError
from pretrace.influence.capture import capture, sequence_losses
from pretrace.inputs.batching import collate
from pretrace.model.activation_checkpointing import transformer_blocks
from pretrace.model.adapter import wrap_model
from pretrace.testing.tiny import ARCHITECTURES, random_sequences, tiny_model


def autograd_gradients(lm, sequence):
    """The brute force: one backward per example through ordinary parameter gradients."""
    lm.model.zero_grad()
    batch = collate([sequence], pad_id=0)
    logits = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    loss = sequence_losses(logits, batch)[0]
    loss.backward()
    return {layer.name: layer.weight_gradient().clone() for layer in lm.layers}, loss.item()


def relative_error(x, y):
    return float((x - y).norm() / y.norm())


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_captured_gradients_equal_autograd_loop(arch, dtype, tolerance):
    model = tiny_model(arch).to(dtype)
    # Every linear layer, attention included; not a tied lm_head, whose .grad mixes in the embedding.
    lm = wrap_model(model, layers=[r"^(?!lm_head)"], device="cpu")
    sequences = random_sequences(5, seed=1)
    cap = capture(lm, collate(sequences, pad_id=0))
    for i, seq in enumerate(sequences):
        expected, loss = autograd_gradients(lm, seq)
        assert cap.losses[i].item() == pytest.approx(loss, rel=1e-5)
        for name, grad in expected.items():
            got = cap.per_example_gradients(name)[i].to(grad)
            assert relative_error(got, grad) < tolerance, (arch, name, i)


def test_bias_gradient_is_last_column():
    lm = wrap_model(tiny_model("gpt2"), layers=["mlp"], device="cpu")
    assert all(layer.has_bias for layer in lm.layers)
    seq = random_sequences(1, seed=3)[0]
    expected, _ = autograd_gradients(lm, seq)
    cap = capture(lm, collate([seq], pad_id=0))
    for layer in lm.layers:
        got = cap.per_example_gradients(layer.name)[0]
        torch.testing.assert_close(got[:, -1], expected[layer.name][:, -1], rtol=1e-5, atol=1e-7)


def test_padding_does_not_change_an_example():
    lm = wrap_model(tiny_model("llama"), device="cpu")
    short, long = random_sequences(2, min_len=4, max_len=4, seed=5)[0], random_sequences(1, min_len=30, max_len=30)[0]
    alone = capture(lm, collate([short], pad_id=0))
    padded = capture(lm, collate([short, long], pad_id=0))
    for layer in lm.layers:
        torch.testing.assert_close(
            padded.per_example_gradients(layer.name)[0],
            alone.per_example_gradients(layer.name)[0],
            rtol=1e-5,
            atol=1e-7,
        )
        assert padded.a[layer.name][0, 4:].abs().max() == 0


def test_parameters_keep_requires_grad_and_get_no_grad():
    lm = wrap_model(tiny_model("llama"), device="cpu")
    capture(lm, collate(random_sequences(2), pad_id=0))
    assert all(p.requires_grad and p.grad is None for p in lm.model.parameters())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_checkpointed_blocks_capture_the_same_bytes_and_are_unwrapped_after(arch):
    """Every linear layer (attention's too, inside the recomputed blocks), padded batch."""
    model = tiny_model(arch)
    batch = collate(random_sequences(4, min_len=5, max_len=20, seed=1), pad_id=0)
    plain = capture(wrap_model(model, layers=[r"^(?!lm_head)"], device="cpu"), batch)
    lm = wrap_model(model, layers=[r"^(?!lm_head)"], device="cpu", activation_checkpointing=True)
    checkpointed = capture(lm, batch)
    assert torch.equal(checkpointed.losses, plain.losses)
    for name in plain.a:
        assert torch.equal(checkpointed.a[name], plain.a[name]) and torch.equal(checkpointed.g[name], plain.g[name]), (
            name
        )
    blocks = transformer_blocks(model)
    assert len(blocks) == 2 and all("forward" not in vars(block) for block in blocks)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_checkpointing_a_model_without_blocks_is_refused():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    with pytest.raises(
        InputError,
        match="Sequential has no list of transformer blocks to checkpoint; set activation_checkpointing: false",
    ):
        wrap_model(model, layers=["1"], device="cpu", activation_checkpointing=True)
