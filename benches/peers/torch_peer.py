#!/usr/bin/env python3
"""PyTorch peers of flashneck's ops, timed on request of `flashneck-bench`.

Protocol: one JSON object per line on stdin, one JSON answer per line on stdout.

  {"cmd": "hello"}
      -> {"torch": "2.5.1", "cuda": true}
  {"cmd": "setup", "id": "...", "op": "attention_forward", "dtype": "f32", "device": "cpu",
   "threads": 2, "problem": {"family": "attention", ...}}
      -> {"name": "torch.nn.functional.scaled_dot_product_attention", "warmup_s": 0.12}
         builds the inputs (same shapes and dtypes as the bench) and runs the op once
  {"cmd": "run", "id": "...", "runs": 5}
      -> {"times_s": [...]}   one time per call (CPU: perf_counter; CUDA: CUDA events)
  {"cmd": "drop", "id": "..."}
      -> {"ok": true}

Any failure answers {"error": "..."} instead. A single spec with "runs" and no "cmd" on stdin
(the one-shot form) is set up, run and answered with {"name", "times_s"}.

The GR-KAN peer is an eager PyTorch implementation written from SPEC §3 (autograd for the
backward), the way a model would write it without a fused kernel.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def uniform(shape, lo, hi, dtype, device, gen):
    t = torch.rand(shape, generator=gen, dtype=torch.float32, device="cpu")
    return (lo + (hi - lo) * t).to(device=device, dtype=dtype)


def grkan_eager(x, a, b, groups):
    """SPEC §3: y = P(x) / Q(x), P = sum a_i x^i, Q = 1 + sum |b_j| |x|^j, per channel group."""
    rows, channels = x.shape
    xg = x.float().view(rows, groups, channels // groups)
    m = a.shape[1] - 1
    p = a[:, m].view(1, groups, 1).expand_as(xg)
    for i in range(m - 1, -1, -1):
        p = p * xg + a[:, i].view(1, groups, 1)
    ax = xg.abs()
    bb = b.abs()
    n = b.shape[1]
    q = bb[:, n - 1].view(1, groups, 1).expand_as(xg)
    for j in range(n - 2, -1, -1):
        q = q * ax + bb[:, j].view(1, groups, 1)
    q = 1.0 + q * ax
    return (p / q).to(x.dtype).view(rows, channels)


class Case:
    """One op on one problem: inputs built once, `call()` runs the op once."""

    def __init__(self, spec):
        op = spec["op"]
        dtype = DTYPES[spec["dtype"]]
        self.device = spec.get("device", "cpu")
        if self.device == "cpu":
            torch.set_num_threads(int(spec.get("threads", torch.get_num_threads())))
        prob = spec["problem"]
        fam = prob["family"]
        gen = torch.Generator().manual_seed(1234)
        dev = self.device

        def u(shape, lo=-1.0, hi=1.0, grad=False):
            t = uniform(shape, lo, hi, dtype, dev, gen)
            return t.requires_grad_(grad)

        if fam == "attention" and op in ("attention_forward", "attention_backward"):
            shape = (prob["batch"], prob["heads"], prob["len"], prob["head_dim"])
            causal = bool(prob["causal"])
            grad = op == "attention_backward"
            q, k, v = u(shape, grad=grad), u(shape, grad=grad), u(shape, grad=grad)
            self.name = "torch.nn.functional.scaled_dot_product_attention"
            if not grad:
                self.call = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            else:
                self.name += " (autograd backward)"
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                d_o = u(shape)
                self.call = lambda: torch.autograd.grad(out, (q, k, v), d_o, retain_graph=True)
        elif fam == "gr_kan" and op in ("grkan_forward", "grkan_backward"):
            rows, channels, groups = prob["rows"], prob["channels"], prob["groups"]
            grad = op == "grkan_backward"
            x = u((rows, channels), -3.0, 3.0, grad=grad)
            a = torch.zeros(groups, 6, device=dev)
            a[:, 1] = 1.0
            a = (a + uniform((groups, 6), -0.1, 0.1, torch.float32, dev, gen)).requires_grad_(grad)
            b = uniform((groups, 4), -0.1, 0.1, torch.float32, dev, gen).requires_grad_(grad)
            self.name = "eager GR-KAN (SPEC §3)"
            if not grad:
                self.call = lambda: grkan_eager(x, a, b, groups)
            else:
                self.name += " (autograd backward)"
                y = grkan_eager(x, a, b, groups)
                dy = u((rows, channels))
                self.call = lambda: torch.autograd.grad(y, (x, a, b), dy, retain_graph=True)
        elif fam == "gumbel" and op in ("gumbel_softmax_forward", "gumbel_softmax_backward"):
            shape = (prob["rows"], prob["classes"])
            grad = op == "gumbel_softmax_backward"
            logits = u(shape, -4.0, 4.0, grad=grad)
            self.name = "torch.nn.functional.gumbel_softmax"
            if not grad:
                self.call = lambda: F.gumbel_softmax(logits, tau=1.0, hard=False, dim=-1)
            else:
                self.name += " (autograd backward)"
                y = F.gumbel_softmax(logits, tau=1.0, hard=False, dim=-1)
                dy = u(shape)
                self.call = lambda: torch.autograd.grad(y, logits, dy, retain_graph=True)
        else:
            raise ValueError(f"no PyTorch peer for {op} on a {fam} problem")
        self.warmup_s = self.time(1)[0]

    def time(self, runs):
        times = []
        if self.device.startswith("cuda"):
            for _ in range(runs):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                self.call()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
        else:
            for _ in range(runs):
                t0 = time.perf_counter()
                self.call()
                times.append(time.perf_counter() - t0)
        return times


def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    cases = {}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
            cmd = msg.get("cmd")
            if cmd == "hello":
                answer({"torch": torch.__version__, "cuda": torch.cuda.is_available()})
            elif cmd == "setup":
                case = Case(msg)
                cases[msg["id"]] = case
                answer({"name": case.name, "warmup_s": case.warmup_s})
            elif cmd == "run":
                answer({"times_s": cases[msg["id"]].time(int(msg["runs"]))})
            elif cmd == "drop":
                cases.pop(msg["id"], None)
                answer({"ok": True})
            elif cmd is None and "runs" in msg:
                case = Case(msg)
                answer({"name": case.name, "times_s": case.time(int(msg["runs"]))})
            else:
                answer({"error": f"unknown command {cmd!r}"})
        except Exception as e:  # noqa: BLE001 - every failure goes back to the bench as text
            answer({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
