"""bench.py: the FLOP count, the curriculum ideal, option parsing, a tiny run that writes the
documented JSON, and a training step that never reads a tensor on the host.

Oracles: token counts N = prefix + (r/4)^2 summed by hand for the ideal curriculum ratio
(211/396 with the dist token); the forward FLOP formula written out for the custom preset and
checked against the model's own linear-layer weights; the tiny run's FLOPs per step counted by
hand per cell, and the relations between its timings (images/s = batch / step time, ...);
a synthetic report whose step times are
proportional to the tokens gives exactly the ideal; Tensor methods that read on the host
patched to fail inside the step (the CPU stand-in for "no host synchronisation").
"""
import contextlib
import io
import json

import pytest
import torch

import bench
import data as data_lib
import irkd
import runs

def test_ideal_curriculum_ratio():
    # patch 4, cls + dist token: N = 2 + (r/4)^2 for r = 12..32
    assert bench.ideal_curriculum_ratio(irkd.RESOLUTIONS, 4, 2) == pytest.approx(
        (11 + 18 + 27 + 38 + 51 + 66) / (6 * 66))
    assert bench.ideal_curriculum_ratio(irkd.RESOLUTIONS, 4, 1) == pytest.approx(
        (10 + 17 + 26 + 37 + 50 + 65) / (6 * 65))


def test_forward_flops_formula():
    # custom (D=128, depth 4, M=256), 32 px, patch 4, two prefix tokens: N = 66, 64 patches
    D, M, N = 128, 256, 66
    expected = (2 * 64 * 3 * 16 * D + 4 * (2 * N * (4 * D * D + 2 * D * M) + 4 * N * N * D)
                + 2 * D * 10 * 2)
    assert bench.forward_flops("custom", 32, 4, 2) == expected
    # the linear layers' weights are the parameters that meet every token
    model = irkd.build_model("custom", patch_size=4)
    linear = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, irkd.nn.Linear))
    assert linear == 4 * (4 * D * D + 2 * D * M)
    ce = bench.step_flops("custom", "CE", 32, 4, 32)
    kd = bench.step_flops("custom", "KD", 32, 4, 32)
    assert ce == 3 * bench.forward_flops("custom", 32, 4, 1)
    assert kd == (3 * bench.forward_flops("custom", 32, 4, 2)
                  + bench.forward_flops("small", 32, 4, 1))


def test_parse_args_plans():
    quick = bench.parse_args([])
    assert quick["quick"] and quick["plan"]["small"][0] == (12, 32)
    full = bench.parse_args(["--full"])
    assert not full["quick"] and full["plan"]["small"][0] == irkd.RESOLUTIONS
    o = bench.parse_args(["--presets=custom", "--steps=2", "--resolutions=12,32"])
    assert o["plan"] == {"custom": ((12, 32), 2)} and o["overhead_res"] == (12, 32)
    for bad in (["--presets=huge"], ["--modes=XX"], ["--nope=1"], ["--resolutions=13"],
                ["--steps=x"]):
        with pytest.raises(ValueError):
            bench.parse_args(bad)


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    """bench.main on the custom preset, one step at 12 and 32 px: (rc, report, printed)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = bench.main(["--presets=custom", "--steps=1", "--warmup=0", "--resolutions=12,32",
                         "--batch_size=8", "--patience=0", "--malloc=system", f"--out={out}"])
    return rc, json.loads(out.read_text()), printed.getvalue()


def test_bench_tiny_run_writes_json(tiny_bench):
    rc, rep, printed = tiny_bench
    assert rc == 0
    assert "training images/s" in printed and "pipeline overhead" in printed
    for key in ("meta", "peak", "teacher_forward", "train", "overhead", "sal_over_kd",
                "curriculum", "mfu_32", "targets", "ideal_curriculum_ratio", "host_sync_free"):
        assert key in rep, key
    assert rep["host_sync_free"] is None                # checked on CUDA only
    assert rep["peak"]["flops_per_s"] > 0
    assert rep["ideal_curriculum_ratio"] == pytest.approx(211 / 396)
    assert rep["sal_over_kd"]["custom"]["summed"] > 0
    assert rep["curriculum"] == {}                 # needs all six resolutions
    assert set(rep["targets"]) == {"pipeline_overhead", "sal_over_kd"}
    assert rep["mfu_32"]["custom"]["KD"] > 0
    # the peak memory per preset: a torch process holds tens of MiB at least, and no more
    # than the peak the process itself saw at the end (read the same way)
    rss = rep["peak_memory_mib"]["custom"]["rss"]
    assert 50 < rss <= runs.peak_memory_mib(torch.device("cpu"))["rss"]
    assert "peak memory after each preset" in printed


# Oracle: FLOPs per step of 8 images counted by hand (the module docstring's formula; custom
# D=128, depth 4, M=256; the ViT-Small teacher D=384, depth 12, M=1536; patch 4, so 9 patches
# at 12 px and 64 at 32 px, N = patches + 1 (CE) or + 2 (KD)). One student forward at 12 px,
# CE: embed 2*9*48*128 = 110,592 + blocks 4*(2*10*131,072 + 4*100*128) = 10,690,560 + head
# 2,560 = 10,803,712; the step is 3 forwards (+ the teacher's one; + rollouts, depth*2*N^3,
# for KD+Sal): e.g. KD at 12 px: 8 * (3 * 11,897,856 + 426,855,936) = 3,700,396,032.
HAND_GFLOP_PER_STEP = {
    ("CE", "12"): 0.259289088, ("KD", "12"): 3.700396032, ("KD+Sal", "12"): 3.700843584,
    ("CE", "32"): 1.862381568, ("KD", "32"): 24.618995712, ("KD+Sal", "32"): 24.726922944,
}
HAND_TOKENS = {("CE", "12"): 10, ("KD", "12"): 11, ("KD+Sal", "12"): 11,
               ("CE", "32"): 65, ("KD", "32"): 66, ("KD+Sal", "32"): 66}


# Relations that must hold between the measured fields (batch 8, one timed step each):
# images/s = 8 / step_s; FLOP/s = FLOPs / step_s; mfu = FLOP/s / the matmul peak; the overhead's
# full step is the cell's step, its ratio full / (bare student + bare teacher), and the bare
# teacher is the teacher forward timed on its own (fused for KD, explicit for KD+Sal, none for CE).
def test_bench_tiny_run_cells_match_hand_flops_and_their_timings(tiny_bench):
    _, rep, _ = tiny_bench
    B, peak = 8, rep["peak"]["flops_per_s"]
    assert set(rep["train"]["custom"]) == {"CE", "KD", "KD+Sal"}
    for (mode, r), gflop in HAND_GFLOP_PER_STEP.items():
        cell = rep["train"]["custom"][mode][r]
        assert cell["gflop_per_step"] == pytest.approx(gflop, rel=1e-12), (mode, r)
        assert cell["tokens"] == HAND_TOKENS[mode, r], (mode, r)
        assert cell["steps"] == 1 and cell["step_s_all"] == [cell["step_s"]]
        assert cell["step_s_median"] == cell["step_s"] and cell["step_s"] > 0
        assert cell["images_per_s"] == pytest.approx(B / cell["step_s"], rel=1e-9)
        assert cell["flops_per_s"] == pytest.approx(gflop * 1e9 / cell["step_s"], rel=1e-9)
        assert cell["mfu"] == pytest.approx(cell["flops_per_s"] / peak, rel=1e-9)
        o = rep["overhead"]["custom"][mode][r]
        assert o["full_step_s"] == cell["step_s"]
        tf = rep["teacher_forward"][r]
        teacher_s = {"CE": 0.0, "KD": B / tf["images_per_s"],
                     "KD+Sal": B / tf["explicit_images_per_s"]}[mode]
        assert o["bare_teacher_s"] == pytest.approx(teacher_s, rel=1e-9, abs=0.0), (mode, r)
        assert o["bare_student_s"] > 0
        assert o["ratio"] == pytest.approx(o["full_step_s"] / (o["bare_student_s"] + teacher_s),
                                           rel=1e-9)


def test_curriculum_ratio_from_step_times():
    # a synthetic report: step time proportional to tokens gives exactly the ideal
    opts = bench.parse_args(["--presets=custom", "--modes=KD"])
    train = {"custom": {"KD": {str(r): dict(step_s=float(bench.num_tokens(r, 4, 2)), mfu=0.1,
                                            images_per_s=1.0, flops_per_s=1.0)
                               for r in irkd.RESOLUTIONS}}}
    peak = dict(flops_per_s=1.0, dtype="float32", n=1, seconds=1.0)
    rep = bench.summarise(opts, irkd.torch.device("cpu"), peak, {}, train, {})
    c = rep["curriculum"]["custom"]["KD"]
    assert c["ratio"] == pytest.approx(211 / 396) and abs(c["rel_err"]) < 1e-12
    assert rep["targets"]["curriculum"]["met"]


def pipeline_cell(mode):
    """A tiny student (and teacher for KD modes) in a bench.Cell with SGD, plus its data and
    one batch of 8 from the sampler."""
    torch = irkd.torch
    torch.manual_seed(0)
    kd = mode != "CE"
    student = irkd.ViT(dim=32, depth=2, heads=2, mlp_dim=64, patch_size=4, distill_token=kd)
    teacher = irkd.ViT(dim=32, depth=2, heads=2, mlp_dim=64, patch_size=4) if kd else None
    loss_fn = irkd.IRKDLoss(teacher, gamma=0.8 if mode == "KD+Sal" else 0.0)
    cell = bench.Cell(student, loss_fn, torch.optim.SGD(student.parameters(), lr=0.1), mode)
    cell.sums = torch.zeros(5)
    data = dict(x=torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8),
                y=torch.randint(0, 10, (16,)), lr=0.1)
    batch = next(data_lib.EpochSampler(16, 8, seed=0, device=torch.device("cpu")).epoch())
    return cell, data, batch


@pytest.mark.parametrize("mode", bench.MODES)
def test_pipeline_step_never_reads_a_tensor_on_the_host(monkeypatch, mode):
    # The CPU stand-in for "no host synchronisation inside the step": on CUDA each of these
    # would make the host wait for the GPU. (SGD, because AdamW reads its own step counter.)
    torch = irkd.torch
    cell, data, batch = pipeline_cell(mode)

    def host_read(*args, **kwargs):
        raise AssertionError("a tensor was read on the host inside the training step")

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__",
                 "__index__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    for res in (12, 32):
        bench.pipeline_step(cell, data, batch, res, "same")
    monkeypatch.undo()
    assert torch.isfinite(cell.sums).all()
