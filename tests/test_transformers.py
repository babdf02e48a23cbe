"""ce_kernels.torch.patch_transformers on small Hugging Face causal LMs
built from configs (random weights, nothing downloaded): the same losses
and parameter gradients as the stock models, eager and compiled."""
import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import ce_kernels.torch as ckt  # noqa: E402
from transformers.loss import loss_utils  # noqa: E402

VOCAB = 97


def tiny_model(kind, dtype=torch.float32):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2,
                                         n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                         attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, max_position_embeddings=32)
        model = transformers.LlamaForCausalLM(config)
    return model.to(dtype).train()


def batch():
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (3, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -4:] = 0                 # right padding
    labels = input_ids.clone()
    labels[attention_mask == 0] = -100
    labels[2, :3] = -100                       # an unscored prompt
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def run_steps(model, steps=3, step_fn=None, **extra):
    """Losses and per-step parameter gradients of a few SGD steps. (Not
    Adam: its first step moves every parameter by about lr whatever the
    size of its gradient, so the sign of a gradient entry that is zero up to
    rounding would decide the next steps.)"""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs = dict(batch(), **extra)
    forward = step_fn or (lambda **kw: model(**kw).loss)
    losses, grads = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = forward(**inputs)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
    return losses, grads


def assert_same_training(ours, theirs, loss_rtol=1e-6, **grad_tol):
    for a, b in zip(ours[0], theirs[0]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=loss_rtol, atol=0)
    for step_a, step_b in zip(ours[1], theirs[1]):
        assert step_a.keys() == step_b.keys()
        for name in step_a:
            torch.testing.assert_close(step_a[name], step_b[name], **grad_tol,
                                       msg=lambda m: f"{name}: {m}")


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the fused kernel's calls, to know that it computed the loss."""
    from ce_kernels._rows import Problem

    calls = []
    original = Problem.loss_grad_rows

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(Problem, "loss_grad_rows", counting)
    return calls


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_patched_model_trains_as_the_stock_model(kind, kernel_calls):
    stock = tiny_model(kind)
    ours = copy.deepcopy(stock)
    ckt.patch_transformers(ours)
    try:
        expected = run_steps(stock)
        got = run_steps(ours)
    finally:
        ckt.unpatch_transformers(ours)
    assert len(kernel_calls) == 3
    assert_same_training(got, expected)
    assert ours.loss_function is loss_utils.LOSS_MAPPING["ForCausalLM"]   # unpatched


def test_global_patch_goes_through_the_loss_mapping_and_is_undone(kernel_calls):
    original = loss_utils.LOSS_MAPPING["ForCausalLM"]
    f = torch.nn.functional.cross_entropy
    stock = tiny_model("llama")
    ours = copy.deepcopy(stock)
    expected = run_steps(stock, steps=2)
    ckt.patch_transformers()
    try:
        assert loss_utils.LOSS_MAPPING["ForCausalLM"] is not original
        assert torch.nn.functional.cross_entropy is f          # nothing global in torch
        got = run_steps(ours, steps=2)
    finally:
        ckt.unpatch_transformers()
    assert loss_utils.LOSS_MAPPING["ForCausalLM"] is original
    assert len(kernel_calls) == 2
    assert_same_training(got, expected)


def test_num_items_in_batch(kernel_calls):
    """The gradient-accumulation path: a sum divided by the count given."""
    stock = tiny_model("gpt2")
    ours = copy.deepcopy(stock)
    ckt.patch_transformers(ours)
    n = torch.tensor(40)
    expected = run_steps(stock, steps=2, num_items_in_batch=n)
    got = run_steps(ours, steps=2, num_items_in_batch=n)
    assert len(kernel_calls) == 2
    assert_same_training(got, expected)


def test_bfloat16_model(kernel_calls):
    """Half-precision logits are read as they are; the stock function
    upcasts them to float32 first. Same loss (float32) and gradients."""
    pytest.importorskip("ml_dtypes")
    stock = tiny_model("llama", torch.bfloat16)
    ours = copy.deepcopy(stock)
    ckt.patch_transformers(ours)
    expected = run_steps(stock, steps=1)
    got = run_steps(ours, steps=1)
    assert len(kernel_calls) == 1
    assert_same_training(got, expected, loss_rtol=1e-6)


def test_compiled_model(kernel_calls):
    """torch.compile of the patched model: the same training as the stock
    model in eager mode."""
    stock = tiny_model("llama")
    ours = copy.deepcopy(stock)
    ckt.patch_transformers(ours)
    expected = run_steps(stock, steps=2)
    torch._dynamo.reset()
    compiled = torch.compile(ours, backend="aot_eager")
    got = run_steps(ours, steps=2, step_fn=lambda **kw: compiled(**kw).loss)
    assert len(kernel_calls) == 2
    assert_same_training(got, expected)


def test_other_model_kinds_are_refused():
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, num_labels=3, pad_token_id=0)
    model = transformers.LlamaForSequenceClassification(config)
    stock = model.loss_function
    with pytest.raises(ValueError, match="ForSequenceClassification"):
        ckt.patch_transformers(model)
    assert model.loss_function is stock
