"""The PyTorch peer of kan_gumbel_speed.rs: torch.nn.functional.gumbel_softmax f32 [4096, 4096]
(soft and hard) and a copy of GR-KAN's tensor size, on the same thread count.

    RAYON_NUM_THREADS=2 /opt/torchenv/bin/python crates/flashneck-cpu/examples/kan_gumbel_torch.py
"""
import os
import time

import torch

threads = int(os.environ.get("RAYON_NUM_THREADS", "2"))
torch.set_num_threads(threads)


def median_time(f, iters=7):
    """Median wall seconds per run, and process CPU seconds per run divided by the threads (what
    the wall time would be on idle cores; the machine is shared)."""
    f()
    f()
    ts = []
    cpu0 = time.process_time()
    for _ in range(iters):
        s = time.perf_counter()
        f()
        ts.append(time.perf_counter() - s)
    cpu = (time.process_time() - cpu0) / iters / threads
    ts.sort()
    return ts[iters // 2], cpu


print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
src = torch.rand(25216 * 768)
dst = torch.empty_like(src)
t, c = median_time(lambda: dst.copy_(src), 31)
print(f"torch copy {src.numel()} f32: {t * 1e3:.2f} ms wall, {c * 1e3:.2f} ms cpu/threads")
logits = torch.randn(4096, 4096)
for hard in (False, True):
    t, c = median_time(lambda: torch.nn.functional.gumbel_softmax(logits, tau=1.0, hard=hard))
    print(f"torch gumbel_softmax f32 [4096, 4096] hard={hard}: {t * 1e3:.2f} ms wall, {c * 1e3:.2f} ms cpu/threads")
