"""One LSTM time step's elementwise work, eager (kernels._LSTMSequence's ops as they are) against
one torch.compile'd function per direction, interleaved in one process. Shapes: AWD-LSTM WT2's big
layers at the awd-lstm-adam batch (100 x 1150, bf16 gates) and dynamic evaluation's (1 x 1150, fp32).

    python results/bench-amx/cell-compile/time_cell.py
"""
import functools
import statistics
import time

import torch


def fwd_eager(gate, c_prev, c_next, tanh_c, h_out):
    hid = c_prev.size(1)
    gate[:, :2 * hid].sigmoid_()
    gate[:, 2 * hid:3 * hid].tanh_()
    gate[:, 3 * hid:].sigmoid_()
    i, f, g, o = gate.split(hid, 1)
    torch.mul(f, c_prev, out=c_next).addcmul_(i, g)
    torch.tanh(c_next, out=tanh_c)
    torch.mul(o, tanh_c, out=h_out)


def fwd_fused(gate, c_prev, c_next, tanh_c, h_out):
    i, f, g, o = gate.float().chunk(4, 1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = f * c_prev + i * g
    tc = c.tanh()
    gate.copy_(torch.cat((i, f, g, o), 1))
    c_next.copy_(c)
    tanh_c.copy_(tc)
    h_out.copy_(o * tc)


def bwd_eager(gates_t, tanh_t, c_prev, dh, dc, grad_out_t, d_gates_t, d_bias, scratch):
    gate, d_gate, tanh_c, tmp, one = scratch
    hid = dh.size(1)
    i, f, g, o = gate.split(hid, 1)
    di, df, dg, do = d_gate.split(hid, 1)
    gate.copy_(gates_t)
    tanh_c.copy_(tanh_t)
    dh.add_(grad_out_t)
    torch.sub(1, o, out=do).mul_(o).mul_(tanh_c).mul_(dh)
    torch.addcmul(one, tanh_c, tanh_c, value=-1, out=tmp).mul_(o)
    dc.addcmul_(dh, tmp)
    torch.sub(1, i, out=di).mul_(i).mul_(g).mul_(dc)
    torch.sub(1, f, out=df).mul_(f).mul_(c_prev).mul_(dc)
    torch.addcmul(one, g, g, value=-1, out=dg).mul_(i).mul_(dc)
    dc.mul_(f)
    d_bias.add_(d_gate)
    d_gates_t.copy_(d_gate)


def bwd_fused(gates_t, tanh_t, c_prev, dh, dc, grad_out_t, d_gates_t, d_bias):
    i, f, g, o = gates_t.float().chunk(4, 1)
    dh = dh + grad_out_t
    dcn = dc + dh * o * (1 - tanh_t * tanh_t)
    d = torch.cat((dcn * g * i * (1 - i), dcn * c_prev * f * (1 - f), dcn * i * (1 - g * g),
                   dh * tanh_t * o * (1 - o)), 1)
    dc.copy_(dcn * f)
    d_bias.add_(d)
    d_gates_t.copy_(d)


def main():
    torch.manual_seed(0)
    for batch, hid, dt in ((100, 1150, torch.bfloat16), (1, 1150, torch.float32)):
        pre = torch.randn(batch, 4 * hid).to(dt)
        c_prev = torch.randn(batch, hid)
        outs = {k: (torch.empty(batch, hid), torch.empty(batch, hid), torch.empty(batch, hid, dtype=dt))
                for k in ("eager", "fused")}
        fwd = {"eager": fwd_eager, "fused": torch.compile(fwd_fused, dynamic=False)}
        gates_t, tanh_t = torch.rand(batch, 4 * hid).to(dt), torch.rand(batch, hid) * 2 - 1
        g_out = torch.randn(batch, hid)
        scratch = (torch.empty(batch, 4 * hid), torch.empty(batch, 4 * hid), torch.empty(batch, hid),
                   torch.empty(batch, hid), torch.ones(()))
        bwd = {"eager": functools.partial(bwd_eager, scratch=scratch), "fused": torch.compile(bwd_fused, dynamic=False)}
        # agreement
        res = {}
        for k in fwd:
            g = pre.clone()
            fwd[k](g, c_prev, *outs[k])
            dh, dc, dg, db = torch.ones(batch, hid), torch.ones(batch, hid), torch.empty(batch, 4 * hid, dtype=dt), \
                torch.zeros(batch, 4 * hid)
            bwd[k](gates_t, tanh_t, c_prev, dh, dc, g_out, dg, db)
            res[k] = [g.float(), *[t.float() for t in outs[k]], dc, dg.float(), db]
        err = max((a - b).abs().max().item() for a, b in zip(res["eager"], res["fused"], strict=True))
        print(f"batch {batch} x {hid}, {dt}: max |eager - fused| {err:.3g}")
        times = {f"{d} {k}": [] for d in ("fwd", "bwd") for k in fwd}
        n = 200
        for _ in range(9):
            for k in fwd:
                g = pre.clone()
                t0 = time.perf_counter()
                for _ in range(n):
                    fwd[k](g, c_prev, *outs[k])
                times[f"fwd {k}"].append((time.perf_counter() - t0) / n)
                dh, dc, dg, db = torch.ones(batch, hid), torch.ones(batch, hid), \
                    torch.empty(batch, 4 * hid, dtype=dt), torch.zeros(batch, 4 * hid)
                t0 = time.perf_counter()
                for _ in range(n):
                    bwd[k](gates_t, tanh_t, c_prev, dh, dc, g_out, dg, db)
                times[f"bwd {k}"].append((time.perf_counter() - t0) / n)
        for k, v in times.items():
            print(f"  {k:10s} median {statistics.median(v[1:]) * 1e6:8.1f} us per step")


if __name__ == "__main__":
    main()
