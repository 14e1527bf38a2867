"""plots.py on synthetic run directories (written by make_run as train_lib.train writes them):
every figure is a real PNG, and bad or missing run directories give one clear line and exit
code 2, never a traceback.

Oracles: the PNG signature and a size between 1 KB and 200 KB for every figure; the exact set
of file names main() writes; the exact error line (no "Traceback", one line, the command that
would make the missing run); make_command's expected command line for each run directory;
the saliency figure's texts (headings by hand, and their drawn boxes never overlapping); the
report row of a quick teacher, written out by hand.
"""
import json
import os

import pytest
import torch

import study
import plots

STAGES = [(12, 3), (20, 5), (32, 8)]   # (resolution, grid of a patch-4 model)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def write_log(d, kd, sal, heads):
    """log.jsonl: 6 epochs over the 3 STAGES, 2 epochs each."""
    with open(d / "log.jsonl", "w") as f:
        for epoch in range(1, 7):
            stage = (epoch - 1) // 2
            val = 20.0 + 2 * epoch
            f.write(json.dumps(dict(
                stage=stage, res=STAGES[stage][0], epoch=epoch, stage_epoch=(epoch - 1) % 2 + 1,
                lr=3e-4, loss=2.0 / epoch, ce=2.2 / epoch, kd=0.5 / epoch if kd else 0.0,
                sal=0.05 / epoch if sal else 0.0, train_acc=18.0 + 3 * epoch, val_acc=val,
                val_heads={h: val for h in heads}, seconds=1.0, images_per_s=1000.0)) + "\n")


def write_results(d, name, heads):
    by_res = {str(r): 25.0 + r / 4 for r in (12, 16, 20, 24, 28, 32)}
    write_json(d / "results.json", dict(
        name=name, test_acc=by_res["32"], test_head=heads[-1], test_acc_by_res=by_res,
        heads={h: by_res for h in heads}, params=547732, wall_s=40.0, device="cpu", quick=True,
        epochs=6, train_images=3968, test_images=2000, seed=0))


def write_saliency(d, kd, teacher_grid, stages_=STAGES):
    """saliency.pt: 8 images, a student map per stage (and a teacher map with kd)."""
    g = torch.Generator().manual_seed(0)
    stages = []
    for i, (res, grid) in enumerate(stages_):
        snap = dict(stage=i, res=res, student=torch.rand(8, grid, grid, generator=g))
        if kd:
            tg = teacher_grid or grid
            snap["teacher"] = torch.rand(8, tg, tg, generator=g)
        stages.append(snap)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    torch.save(dict(images=images, labels=torch.arange(8), stages=stages), d / "saliency.pt")


def make_run(root, name="exp1b", *, results=True, saliency=True, teacher_grid=None, kd=True,
             sal=True, stages=STAGES):
    """A run directory as train_lib.train writes it: 6 epochs over 3 curriculum stages (the saliency
    snapshot has `stages`: a teacher trained at 32 px only has one)."""
    d = root / name
    d.mkdir(parents=True)
    write_json(d / "config.json", dict(name=name, model="custom", patch_size=4, kd=kd, cl=True,
                                       sal=sal, alpha=0.5, gamma=0.8, quick=True, params=547732))
    heads = ["cls", "dist", "avg"] if kd else ["cls"]
    write_log(d, kd, sal, heads)
    if results:
        write_results(d, name, heads)
    if saliency:
        write_saliency(d, kd, teacher_grid, stages)
    return d


def assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > 1024, f"{path} is only {len(data)} bytes"
    assert len(data) < 200_000, f"{path} is {len(data)} bytes; figures should stay under 200 KB"


def test_every_figure_is_a_png(tmp_path):
    student = make_run(tmp_path, "exp1b")
    teacher = make_run(tmp_path, "teacher_quick_p4", kd=False, sal=False, saliency=False)
    out = tmp_path / "fig"
    out.mkdir()
    assert_png(plots.plot_curves(str(student), str(out / "curves.png")))
    assert_png(plots.plot_curves(str(teacher), str(out / "curves_teacher.png")))
    assert_png(plots.plot_saliency(str(student), str(out / "saliency.png")))
    assert_png(plots.plot_resolution([str(student), str(teacher)], str(out / "resolution.png")))
    assert_png(plots.plot_table([str(student), str(teacher)], str(out / "table.png")))


def test_saliency_without_teacher_and_with_a_finer_teacher_grid(tmp_path):
    # A CE run has student maps only; teacher_res="full" gives the teacher the 32-px grid.
    ce = make_run(tmp_path, "custom_p4_cl", kd=False, sal=False)
    full = make_run(tmp_path, "exp1a", teacher_grid=8)
    assert_png(plots.plot_saliency(str(ce), str(tmp_path / "ce.png")))
    assert_png(plots.plot_saliency(str(full), str(tmp_path / "full.png"), n_images=2))


def texts_of(fig):
    return [t.get_text() for t in fig.texts]


def test_teacher_saliency_is_headed_model(tmp_path):
    # A teacher's own run has no teacher maps and no student: its one map is the model's.
    teacher = make_run(tmp_path, "teacher_quick_p4", kd=False, sal=False, stages=[(32, 8)])
    texts = texts_of(plots.saliency_figure(str(teacher)))
    assert texts[1:] == ["32 px", "input", "model"]                # after the title
    assert "student" not in texts
    # A distillation run keeps both headings; a CE student run stays "student".
    assert texts_of(plots.saliency_figure(str(make_run(tmp_path, "exp1b"))))[1:5] == [
        "12 px", "input", "teacher", "student"]
    ce = make_run(tmp_path, "custom_p4_cl", kd=False, sal=False)
    assert texts_of(plots.saliency_figure(str(ce)))[1:4] == ["12 px", "input", "student"]


@pytest.mark.parametrize("stages, kd", [([(32, 8)], False), ([(32, 8)], True), (STAGES, True),
                                        (STAGES * 2, True)])
def test_saliency_title_and_headings_never_overlap(tmp_path, stages, kd):
    # The drawn boxes of the title, the stage and column headings, the row labels and the
    # pictures: no two overlap, from one stage with one map (the narrowest figure) up.
    run = make_run(tmp_path, "teacher_quick_p4" if not kd else "exp1b", kd=kd, sal=kd,
                   stages=stages)
    fig = plots.saliency_figure(str(run))
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    boxes = [t.get_window_extent(renderer) for t in fig.texts]
    boxes += [ax.get_window_extent(renderer) for ax in fig.axes]
    boxes += [ax.yaxis.label.get_window_extent(renderer) for ax in fig.axes
              if ax.get_ylabel()]
    title = boxes[0]
    width, height = fig.bbox.width, fig.bbox.height
    assert title.x0 >= 0 and title.x1 <= width and title.y1 <= height   # inside the figure
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap_w = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_h = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_w <= 0.5 or overlap_h <= 0.5, (a, b)


def test_saliency_scale_is_fixed_and_rows_show_their_range(tmp_path):
    # A map that varies by +-2 % is drawn on the fixed 0.5..2 scale, not stretched to it;
    # its actual range is in the row label.
    run = make_run(tmp_path, "teacher_quick_p4", kd=False, sal=False, stages=[(32, 8)])
    snap = torch.load(run / "saliency.pt", weights_only=False)
    flat = torch.ones(8, 8, 8)
    flat[:, 0, 0], flat[:, 7, 7] = 0.98, 1.02
    snap["stages"][0]["student"] = flat * 0.015
    torch.save(snap, run / "saliency.pt")
    fig = plots.saliency_figure(str(run))
    overlays = [im for ax in fig.axes for im in ax.images if im.get_cmap().name == "jet"]
    assert overlays and all((im.norm.vmin, im.norm.vmax) == (0.5, 2.0) for im in overlays)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["airplane\n0.98–1.02", "automobile\n0.98–1.02", "bird\n0.98–1.02",
                      "saliency / map mean"]                 # the rows, then the colour bar


def test_runs_sharing_a_name_are_told_apart(tmp_path, capsys):
    a = make_run(tmp_path / "base" / "runs" / "quick", "teacher_quick_p4", kd=False, sal=False)
    b = make_run(tmp_path / "new" / "runs" / "quick", "teacher_quick_p4", kd=False, sal=False)
    runs = [plots.load_run(str(a)), plots.load_run(str(b))]
    assert plots.run_labels(runs) == ["teacher_quick_p4 [base]", "teacher_quick_p4 [new]"]
    out = tmp_path / "figs"
    assert plots.main([str(a), str(b), "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == [
        "curves_teacher_quick_p4_base.png", "curves_teacher_quick_p4_new.png", "resolution.png",
        "saliency_teacher_quick_p4_base.png", "saliency_teacher_quick_p4_new.png", "table.png"]


def test_report_reads_a_quick_teachers_setup_from_its_config(tmp_path):
    # teacher_quick_p4 is no EXPERIMENTS cell: setup and student come from its config.json.
    make_run(tmp_path / "quick", "teacher_quick_p4", kd=False, sal=False, saliency=False)
    make_run(tmp_path, "my_own_name", kd=True, sal=False, saliency=False)   # --name=my_own_name
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")
            for line in study.report(str(tmp_path)).splitlines()[2:]}
    assert rows["teacher_quick_p4 (quick)"][1:3] == ["teacher", "custom p4"]
    assert rows["my_own_name (quick)"][1:3] == ["KD+CL", "custom p4"]
    assert not any("?" in cell for row in rows.values() for cell in row)


def test_main_writes_all_figures(tmp_path, capsys):
    a, b = make_run(tmp_path / "runs", "exp1b"), make_run(tmp_path / "runs", "exp1a", sal=False)
    out = tmp_path / "figs"
    assert plots.main([str(a), str(b), "--out", str(out)]) == 0
    names = sorted(os.listdir(out))
    assert names == ["curves_exp1a.png", "curves_exp1b.png", "resolution.png", "saliency_exp1a.png",
                     "saliency_exp1b.png", "table.png"]
    for n in names:
        assert_png(out / n)
    # Without --out: figures/ beside the run directories.
    assert plots.main([str(a)]) == 0
    assert (tmp_path / "runs" / "figures" / "curves_exp1b.png").exists()


def test_missing_directory_is_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "quick" / "exp1b"
    assert plots.main([str(missing), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1
    assert "does not exist" in err and "python experiments.py exp1b --quick" in err


def test_directory_without_log(tmp_path, capsys):
    (tmp_path / "exp1a").mkdir()
    assert plots.main([str(tmp_path / "exp1a")]) == 2
    err = capsys.readouterr().err
    assert "has no log.jsonl" in err and "python experiments.py exp1a" in err
    assert "Traceback" not in err


def test_truncated_results_json(tmp_path, capsys):
    d = make_run(tmp_path, "exp1b")
    text = (d / "results.json").read_text()
    (d / "results.json").write_text(text[: len(text) // 2])
    out = tmp_path / "f"
    assert plots.main([str(d), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert "results.json is truncated or not valid JSON" in err
    assert "python experiments.py exp1b" in err
    assert not out.exists() or not os.listdir(out)   # nothing drawn from a broken run


def test_truncated_log_line_in_the_middle(tmp_path, capsys):
    d = make_run(tmp_path, "exp1b")
    lines = (d / "log.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][:20] + "\n"
    (d / "log.jsonl").write_text("".join(lines))
    assert plots.main([str(d)]) == 2
    err = capsys.readouterr().err
    assert "log.jsonl line 3 is truncated" in err and "Traceback" not in err


def test_partial_run_still_gets_curves(tmp_path, capsys):
    # Still training: no results.json, and the last log line half written.
    d = make_run(tmp_path, "exp1b", results=False)
    with open(d / "log.jsonl", "a") as f:
        f.write('{"stage": 2, "res": 32, "epo')
    out = tmp_path / "f"
    assert plots.main([str(d), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no results.json yet" in printed
    assert_png(out / "curves_exp1b.png")
    assert_png(out / "saliency_exp1b.png")
    assert not (out / "resolution.png").exists() and not (out / "table.png").exists()


def test_bad_arguments(tmp_path, capsys):
    assert plots.main([]) == 2
    assert plots.main(["--colour=red", str(tmp_path)]) == 2
    assert plots.main([str(tmp_path), "--out"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 3


@pytest.mark.parametrize("run_dir, command", [
    ("runs/quick/exp1b", "python experiments.py exp1b --quick"),
    ("runs/tiny_p4_ce", "python experiments.py tiny_p4_ce"),
    ("runs/quick/teacher_quick_p2", "python experiments.py teacher_small_p2 --quick"),
    ("elsewhere/exp1a", "python experiments.py exp1a --out=elsewhere"),
])
def test_make_command(run_dir, command):
    assert plots.make_command(run_dir) == command


# Oracle: the cost worked by hand. A KD curriculum (patch 4, two prefix tokens): epochs at 12,
# 12 and 32 px cost 11/66, 11/66 and 66/66 of a 32-px epoch; tested after epochs 1 and 3.
def test_efficiency_points_count_compute_by_tokens():
    run = dict(config=dict(patch_size=4, kd=True, cl=True),
               log=[dict(res=12, epoch=1, seconds=2.0), dict(res=12, epoch=2, seconds=2.0),
                    dict(res=32, epoch=3, seconds=5.0)],
               results=dict(at_epoch={"1": {"cls": 30.0}, "3": {"cls": 50.0}},
                            heads_last={"cls": {"32": 50.0}}, heads={}))
    points = plots.efficiency_points(run)
    want = [(2.0, 11 / 66, 30.0), (9.0, 2 * 11 / 66 + 1, 50.0), (9.0, 2 * 11 / 66 + 1, 50.0)]
    for got, exp in zip(points, want, strict=True):
        assert got == pytest.approx(exp)


# Oracle: the grouping and the band worked by hand. Two seeds of study_kd (NAME and NAME-seed1,
# as runs.seeded names them) are one arm; study_ce stays alone.
def test_seeds_of_one_arm_are_one_line_with_a_band(tmp_path):
    dirs = [make_run(tmp_path, n) for n in ("study_kd", "study_ce", "study_kd-seed1")]
    for d, acc in zip(dirs, (60.0, 50.0, 64.0)):
        results = json.loads((d / "results.json").read_text())
        results["test_acc_by_res"] = {"16": acc - 10, "32": acc}
        results["at_epoch"] = {"2": {"cls": acc - 20}}
        results["heads_last"] = {"cls": {"32": acc}}
        write_json(d / "results.json", results)
    groups = plots.seed_groups([plots.load_run(str(d)) for d in dirs])
    assert [(label, [r["name"] for r in rs]) for label, rs in groups] == [
        ("study_kd", ["study_kd", "study_kd-seed1"]),
        ("study_ce", ["study_ce"])]
    assert plots.seed_note(groups[0][1]) == "mean of 2 seeds, band: min-max"
    assert plots.seed_band([[50.0, 60.0], [54.0, 64.0]]) == ([52.0, 62.0], [50.0, 60.0],
                                                            [54.0, 64.0])
    assert_png(plots.plot_resolution([str(d) for d in dirs], str(tmp_path / "res.png")))
    assert_png(plots.plot_efficiency([str(d) for d in dirs], str(tmp_path / "eff.png")))
