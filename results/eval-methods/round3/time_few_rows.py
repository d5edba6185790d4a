"""Few-row decoder products at the 2-hour baseline's shapes (33,278 x 650, fp32): the logits of K
rows as addmm(b, x, W.T) (the code before kernels.FEW_ROWS) against (W @ x.T).T + b, and the
features' gradient probs @ W of 5 rows as one sgemm, as batched products over 2 or 14 blocks, and
summed over blocks of 4,096, 2,048 (kernels.BLOCK_ROWS) or 1,024 vocabulary rows. Medians of 7
rounds of 10 calls; a plain read of W for scale.

    python results/eval-methods/round3/time_few_rows.py
"""
import torch
from common import median_ms

torch.manual_seed(0)
vocab, d = 33278, 650
w, b = torch.randn(vocab, d), torch.randn(vocab)
print(f"W.sum(), a plain read of the weight: {median_ms(w.sum):.2f} ms")
for rows in (1, 5, 10, 20, 35, 100, 350, 700):
    x, out = torch.randn(rows, d), torch.empty(rows, vocab)
    transposed = median_ms(lambda x=x, out=out: torch.addmm(b, x, w.t(), out=out))
    natural = median_ms(lambda x=x, out=out: out.copy_(torch.addmm(b[:, None], w, x.t()).t()))
    print(f"logits of {rows:3d} rows: addmm(b, x, W.T) {transposed:6.2f} ms, (W @ x.T).T + b {natural:6.2f} ms")

probs = torch.randn(5, vocab)


def blocks(size):
    out = probs.new_zeros(5, d)
    for start in range(0, vocab, size):
        out.addmm_(probs[:, start:start + size], w[start:start + size])
    return out


def batched(n):
    rows = vocab - vocab % n
    return torch.bmm(probs[:, :rows].view(5, n, -1).transpose(0, 1), w[:rows].view(n, -1, d)).sum(0)


print(f"features' gradient, 5 rows: probs @ W {median_ms(lambda: probs @ w):.2f} ms; "
      f"W.T @ probs.T {median_ms(lambda: w.t() @ probs.t()):.2f} ms")
print("  batched over 2 / 14 blocks (the last 4 words left out for 14): "
      f"{median_ms(lambda: batched(2)):.2f} / {median_ms(lambda: batched(14)):.2f} ms")
print("  summed over blocks of 4096 / 2048 / 1024 words: "
      + " / ".join(f"{median_ms(lambda s=s: blocks(s)):.2f}" for s in (4096, 2048, 1024)) + " ms")
