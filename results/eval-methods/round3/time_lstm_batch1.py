"""One 650-unit LSTM layer, 5 steps at batch 1, forward and backward (gradients of the outputs'
sum with respect to the input and the four weights) in fp32: oneDNN through torch.lstm
(kernels.fused_lstm, what the baseline's nn.LSTM runs) against our recurrence
(kernels.lstm_sequence). Medians of 7 rounds of 10 calls, twice.

    python results/eval-methods/round3/time_lstm_batch1.py
"""
import torch
from common import median_ms
from kernels import fused_lstm, lstm_sequence

torch.manual_seed(0)
hidden = 650
bound = hidden ** -0.5  # nn.LSTM's initialization
weights = [torch.empty(shape).uniform_(-bound, bound).requires_grad_()
           for shape in ((4 * hidden, hidden), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,))]
x = torch.randn(5, 1, hidden, requires_grad=True)
state = (torch.zeros(1, 1, hidden), torch.zeros(1, 1, hidden))


def forward_backward(layer):
    out, _ = layer(x, state, *weights)
    torch.autograd.grad(out.sum(), [x, *weights])


for _ in range(2):
    print(f"oneDNN {median_ms(lambda: forward_backward(fused_lstm)):.1f} ms, "
          f"ours {median_ms(lambda: forward_backward(lstm_sequence)):.1f} ms")
