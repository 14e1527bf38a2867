"""Cost of the per-image augmentation policies (TrivialAugment: the teacher recipe's switch;
AutoAugment's CIFAR-10 policy: the Tiny p2 KD replay) and random erasing per batch of 128 at
32 px, one CPU thread:
    .venv/bin/python docs/aug_cost.py > docs/aug_cost.out
"""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch, time
import data as data_lib
torch.set_num_threads(1)
x = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
off = torch.randint(0, 9, (128, 2)); fl = torch.rand(128) < 0.5
g = torch.Generator().manual_seed(0)
def t(f, n=50):
    f(); t0 = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t0) / n * 1000
base = t(lambda: data_lib.make_views(x, off, fl, 32, "resize", False))
ta = t(lambda: data_lib.make_views(x, off, fl, 32, "resize", False, aug_gen=g))
aa = t(lambda: data_lib.make_views(x, off, fl, 32, "resize", False, aug_gen=g, policy="autoaugment"))
re_ = t(lambda: data_lib.random_erase(data_lib.make_views(x, off, fl, 32, "resize", False)[0], g, 0.25))
print(f"views {base:.2f} ms, +TA {ta:.2f} ms, +AA {aa:.2f} ms, +RE {re_:.2f} ms per batch of 128 "
      f"(1 thread; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
