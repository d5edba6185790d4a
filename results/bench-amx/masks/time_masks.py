"""Dropout-mask generation on this CPU (see the README's Speed section), medians of 10 in ms.

    python results/bench-amx/masks/time_masks.py          # rand < keep against bernoulli_ -> time_masks.log
    python results/bench-amx/masks/time_masks.py bits     # rand against 16-bit draws -> time_mask_bits.log

`bits` cuts 64-bit random integers into four 16-bit uniforms, one draw per four entries: faster,
but the keep probability is then a multiple of 2^-16 (not adopted).
"""
import statistics
import sys
import time

import torch


def rand_mask(shape, keep):
    return (torch.rand(shape) < keep).float().div_(keep)


def bernoulli_mask(shape, keep):
    return torch.empty(shape).bernoulli_(keep).div_(keep)


def bits16(n):
    """n uniform int16 values (n divisible by 4), from n/4 full-range 64-bit draws."""
    return torch.empty(n // 4, dtype=torch.int64).random_(-2**63, None).view(torch.int16)


def bits16_mask(n, keep):
    threshold = round(keep * 65536) - 32768
    return (bits16(n) < threshold).float().div_((threshold + 32768) / 65536)


def medians(versions, rounds=12):
    times = {name: [] for name in versions}
    for r in range(rounds):
        for name, f in versions.items():
            t0 = time.perf_counter()
            f()
            if r > 1:
                times[name].append((time.perf_counter() - t0) * 1000)
    return {name: round(statistics.median(ts), 3) for name, ts in times.items()}


def main():
    if sys.argv[1:] == ["bits"]:
        n, keep = 4600 * 1150, 0.35
        print(medians({"rand": lambda: rand_mask(n, keep), "bits16": lambda: bits16_mask(n, keep),
                       "bits16 bool only": lambda: bits16(n) < round(keep * 65536) - 32768}))
        m = bits16_mask(n, keep)
        print("mean", m.mean().item(), "keep frac", (m > 0).float().mean().item())
        r = bits16(10**6).float()
        print("int16 mean/min/max", r.mean().item(), r.min().item(), r.max().item())
        return
    shapes = {"weight drop 4600x1150": (4600, 1150), "locked (1,100,1150)": (1, 100, 1150),
              "embedding (33278,1)": (33278, 1)}
    for name, shape in shapes.items():
        print(name, medians({"rand<keep": lambda s=shape: rand_mask(s, 0.5),
                             "bernoulli_": lambda s=shape: bernoulli_mask(s, 0.5)}))
    print("bernoulli mean", bernoulli_mask((4600, 1150), 0.5).mean().item(),
          "rand mean", rand_mask((4600, 1150), 0.5).mean().item())


if __name__ == "__main__":
    main()
