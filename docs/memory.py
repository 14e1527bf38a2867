"""Peak resident memory of one training step of the heaviest quick variant (saliency_p2's:
a ViT-Tiny patch-2 student, KD + rollout saliency, batch 128 at 32 px, with the quick
teacher, a custom-size patch-2 ViT), each case in a fresh process:

    .venv/bin/python docs/memory.py > docs/memory.out

"stored": the teacher's rollout from all its layers' attention, kept at once (before);
"folded": the teacher's rollout folded in as its forward goes (irkd.IRKDLoss today);
"folded+ckpt": and the student's blocks recomputed in backward (Config.checkpoint, which
quick mode turns on for ViT-Tiny and patch-2 students); "kd" / "kd+ckpt": kdonly's step
(KD, no saliency, the fused attention path) without and with it; "+micro32" / "+micro16": the batch
in chunks of 32 / 16 images (Config.micro_batch, which quick mode also turns on for them: the same
step up to float rounding).
"""
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
STEP = r"""
import resource, sys, time, torch
sys.path.insert(0, ROOT)
import irkd, runs
import train as train_lib
runs.keep_freed_memory()                       # as training does on a CPU
torch.manual_seed(0)
student = irkd.build_model("tiny", patch_size=2, distill_token=True)
teacher = irkd.build_model("custom", patch_size=2)
loss_fn = irkd.IRKDLoss(teacher, gamma=0.0 if MODE.startswith("kd") else 0.8)
student.grad_checkpoint = "ckpt" in MODE
if MODE == "stored":                           # the teacher's rollout from stored attentions
    def stored(x, y, layers=None):
        with torch.no_grad():
            logits, attn = teacher(x, return_attn=True)
        return logits, irkd.attention_rollout(attn, num_prefix=1)
    loss_fn.teacher_saliency = stored
opt = irkd.make_optimizer(student, train_lib.RunConfig())
x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
t0 = time.time()
irkd.train_step(student, loss_fn, opt, x, y, labels=y, teacher_input=x, lr=3e-4,
                micro_batch=int(MODE.split("micro")[1]) if "micro" in MODE else 0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(f"{MODE:20s} peak RSS {peak:.2f} GiB, step {time.time() - t0:.0f} s")
"""

print(f"# one train_step, tiny p2 student + custom p2 teacher, KD (+ rollout saliency), batch 128, "
      f"32 px, CPU, {os.environ.get('OMP_NUM_THREADS', 'all')} threads")
for mode in ("stored", "folded", "folded+ckpt", "folded+micro32", "folded+ckpt+micro32",
             "folded+ckpt+micro16", "kd", "kd+ckpt", "kd+ckpt+micro32", "kd+ckpt+micro16"):
    code = f"ROOT = {ROOT!r}\nMODE = {mode!r}\n" + STEP
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    print(out.stdout.strip() or out.stderr.strip()[-500:], flush=True)
