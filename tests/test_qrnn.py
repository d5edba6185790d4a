"""The QRNN (lm/qrnn.py) against independent computations: fo-pooling against a plain loop and its
backward against autograd, the layer against a step-by-step replay, the carried input of the
window-2 convolution, weight drop's masks, and a training step of the language model against a
hand-written float64 forward with the same masks."""
import pytest
import torch
import torch.nn.functional as F

import model as model_module
from helpers import spy_on_masks
from lm import qrnn
from lm.head import detach_hidden, map_hidden
from lm.qrnn import QRNNConfig, QRNNLayer, QRNNModel, fo_pool
from model import activation_regularization, temporal_activation_regularization

RATES = {"dropout_embedding": 0.11, "dropout_input": 0.22, "dropout_hidden": 0.33, "dropout_output": 0.44,
         "dropout_weight": 0.55}


def loop_pool(f, z, c0):
    """fo-pooling one step at a time: c_t = f_t z_t + (1 - f_t) c_{t-1}."""
    c, out = c0[0], []
    for f_t, z_t in zip(f, z, strict=True):
        c = f_t * z_t + (1 - f_t) * c
        out.append(c)
    return torch.stack(out)


def replay_layer(x, weight, bias, window, state):
    """A QRNN-fo layer one step at a time from state (c, prev): the gates of step t from the
    inputs [x_t, x_{t-1}, ...], the previous ones taken from prev before the sequence's own."""
    c, prev = state
    c, seen, out = c[0], list(prev), []
    for x_t in x:
        seen.append(x_t)
        z, f, o = (torch.cat(seen[::-1][:window], dim=1) @ weight.T + bias).chunk(3, dim=1)
        f = torch.sigmoid(f)
        c = f * torch.tanh(z) + (1 - f) * c
        out.append(torch.sigmoid(o) * c)
    return torch.stack(out), c


def random_pool_inputs(steps=7, batch=3, hidden=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    f = torch.rand(steps, batch, hidden, generator=g, dtype=dtype)
    z = torch.randn(steps, batch, hidden, generator=g, dtype=dtype)
    c0 = torch.randn(1, batch, hidden, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (f, z, c0)]


# --- fo-pooling ------------------------------------------------------------------------------------

def test_fo_pool_matches_a_plain_loop_and_its_gradients():
    f, z, c0 = random_pool_inputs()
    c = fo_pool(f, z, c0)
    expected = loop_pool(f, z, c0)
    torch.testing.assert_close(c, expected)
    grad = torch.randn_like(c)
    ours = torch.autograd.grad(c, (f, z, c0), grad)
    for a, b in zip(ours, torch.autograd.grad(expected, (f, z, c0), grad), strict=True):
        torch.testing.assert_close(a, b)


def test_fo_pool_backward_passes_gradcheck():
    assert torch.autograd.gradcheck(fo_pool, random_pool_inputs(steps=5, batch=2, hidden=3))


def test_fo_pool_keeps_its_memory_in_fp32_under_bf16_autocast():
    f, z, c0 = (t.detach().float() for t in random_pool_inputs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = fo_pool(f.bfloat16(), z.bfloat16(), c0)
    assert c.dtype == torch.float32


# --- the layer -------------------------------------------------------------------------------------

def layer_and_state(window, batch=3, seed=0):
    torch.manual_seed(seed)
    layer = QRNNLayer(5, 4, window=window, weight_drop=0.5)
    return layer, (torch.randn(1, batch, 4), torch.randn(window - 1, batch, 5))


@pytest.mark.parametrize("window", [1, 2, 3])
def test_layer_in_eval_equals_a_step_by_step_replay_from_its_state(window):
    layer, state = layer_and_state(window)
    x = torch.randn(6, 3, 5)
    h, (c, prev) = layer.eval()(x, state)
    expected, expected_c = replay_layer(x, layer.weight, layer.bias, window, state)
    torch.testing.assert_close(h, expected)
    torch.testing.assert_close(c[0], expected_c)
    torch.testing.assert_close(prev, x[x.size(0) - (window - 1):])  # the last window - 1 inputs


@pytest.mark.parametrize("split", [1, 3, 5])
def test_two_halves_with_the_carried_state_equal_one_whole_sequence(split):
    """The window-2 convolution's first step in the second half sees the first half's last input."""
    layer, state = layer_and_state(2)
    layer.eval()
    x = torch.randn(6, 3, 5)
    whole, (c, _) = layer(x, state)
    first, carried = layer(x[:split], state)
    second, (c2, _) = layer(x[split:], detach_hidden(carried))
    torch.testing.assert_close(torch.cat([first, second]), whole)
    torch.testing.assert_close(c2, c)


@pytest.fixture
def masks(monkeypatch):
    """Every dropout mask drawn, by the model's dropouts and the QRNN's weight drop, in order."""
    return spy_on_masks(monkeypatch, model_module, qrnn)


def test_weight_drop_masks_the_whole_linear_weight_once_per_call_in_training_only(masks):
    layer, state = layer_and_state(2)
    x = torch.randn(6, 3, 5)
    h, _ = layer.train()(x, state)
    assert [(shape, p) for shape, p, _ in masks] == [((12, 10), 0.5)]  # (3 * hidden, window * input)
    mask = masks[0][2]
    assert 0.3 < (mask == 0).float().mean() < 0.7
    expected, _ = replay_layer(x, layer.weight * mask, layer.bias, 2, state)  # one mask for every step
    torch.testing.assert_close(h, expected)
    h.pow(2).sum().backward()
    assert torch.all(layer.weight.grad[mask == 0] == 0) and layer.weight.grad[mask != 0].abs().sum() > 0
    masks.clear()
    h, _ = layer.eval()(x, state)
    assert masks == []
    torch.testing.assert_close(h, replay_layer(x, layer.weight, layer.bias, 2, state)[0])


@pytest.mark.cuda
def test_layer_on_cuda_runs_the_same_code_and_agrees_with_the_cpu():
    layer, state = layer_and_state(2, batch=8)
    x = torch.randn(40, 8, 5, requires_grad=True)
    h, _ = layer.eval()(x, state)
    h.pow(2).sum().backward()
    cuda_x = x.detach().cuda().requires_grad_()
    cuda_h, _ = layer.cuda()(cuda_x, tuple(s.cuda() for s in state))
    cuda_h.pow(2).sum().backward()
    torch.testing.assert_close(cuda_h.cpu(), h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cuda_x.grad.cpu(), x.grad, rtol=1e-4, atol=1e-5)


# --- the language model ------------------------------------------------------------------------------

def tiny_model(**kw):
    torch.manual_seed(0)
    return QRNNModel(QRNNConfig(vocab_size=30, emsize=6, nhid=10, nlayers=3, **{**RATES, **kw}))


def test_model_shapes_tying_and_config_round_trip():
    net = tiny_model()
    assert net.decoder.weight is net.encoder.weight
    assert [(r.input_size, r.hidden_size, r.window) for r in net.rnns] == [(6, 10, 2), (10, 10, 1), (10, 6, 1)]
    hidden = net.init_hidden(4)
    assert [tuple(t.shape for t in s) for s in hidden] == [((1, 4, 10), (1, 4, 6)), ((1, 4, 10), (0, 4, 10)),
                                                          ((1, 4, 6), (0, 4, 10))]
    out = net.eval()(torch.randint(0, 30, (5, 4)), hidden)
    assert out.logits.shape == (5, 4, 30) and out.raw.shape == out.dropped.shape == (5, 4, 6)
    assert QRNNConfig.from_dict(net.cfg.to_dict()) == net.cfg
    untied = tiny_model(tied=False)
    assert untied.decoder.weight is not untied.encoder.weight and untied.rnns[-1].hidden_size == 10


def reference_objective(params, x, y, hidden, masks, windows, alpha, beta):
    """CE + AR + TAR of the QRNN language model written out by hand from `params` (name -> leaf
    tensor), with the model's masks in the order drawn: embedding, input, then per layer its
    weight and (between layers) the hidden dropout, then the output; the decoder is the tied
    embedding matrix."""
    weight = params["encoder.weight"]
    h = (weight * masks[0])[x] * masks[1]
    m = iter(masks[2:])
    for i, window in enumerate(windows):
        w, b = params[f"rnns.{i}.weight"], params[f"rnns.{i}.bias"]
        h, _ = replay_layer(h, w * next(m), b, window, hidden[i])
        raw = h
        h = h * next(m)  # hidden dropout, or the output dropout after the last layer
    logits = h @ weight.T + params["decoder.bias"]
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    return ce + alpha * h.pow(2).mean() + beta * (raw[1:] - raw[:-1]).pow(2).mean()


def test_a_training_step_equals_a_hand_written_float64_computation(masks):
    """The loss (chunked decoder, tied gradient, custom fo-pooling backward) and one SGD update,
    from a carried state (as the second batch of a text sees it), against the replay. The model
    runs in float64 but for AR and TAR, which model.py sums in fp32."""
    net = tiny_model().double().train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 30, (7, 4), generator=g), torch.randint(0, 30, (7, 4), generator=g)
    with torch.no_grad():
        hidden = detach_hidden(net(x, net.init_hidden(4)).hidden)
    hidden = map_hidden(lambda t: t.double(), hidden)
    masks.clear()
    params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    ce, out = net(x, hidden, y)
    loss = ce + activation_regularization(out.dropped, 2.0) + temporal_activation_regularization(out.raw, 1.5)
    loss.backward()
    torch.optim.SGD(net.parameters(), lr=0.5).step()
    drawn = [m.double() for _, _, m in masks]
    assert len(drawn) == 8  # embedding, input, 3 weights, 2 hidden, output
    expected = reference_objective(params, x, y, hidden, drawn, net.cfg.windows(), 2.0, 1.5)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # AR and TAR are summed in fp32
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), params[name].detach() - 0.5 * params[name].grad, rtol=1e-6, atol=1e-8)


def test_model_draws_no_mask_in_eval_and_halves_carry_like_the_whole(masks):
    net = tiny_model().eval()
    x = torch.randint(0, 30, (8, 4), generator=torch.Generator().manual_seed(2))
    whole = net(x, net.init_hidden(4))
    first = net(x[:3], net.init_hidden(4))
    second = net(x[3:], detach_hidden(first.hidden))
    assert masks == []
    torch.testing.assert_close(torch.cat([first.logits, second.logits]), whole.logits)
