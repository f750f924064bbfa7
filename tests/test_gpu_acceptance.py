"""The GPU acceptance command (issue 23): the --quick CPU run end to end, and the logic of the
GPU branch (budgets, exit status, GPU-hours arithmetic, memory rows) with CUDA mocked."""

import json

import pytest
import torch

from benchmarks import gpu_acceptance as ga
from benchmarks.__main__ import main as bench_main


def test_quick_runs_every_section_on_the_cpu_and_writes_json_and_markdown(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu"
    rows = bench_main(["gpu_acceptance", "--quick", "--", "--out", str(out)])["gpu_acceptance"]
    printed = capsys.readouterr().out
    assert ga.NO_CUDA_LINE in printed.splitlines()
    data = json.loads((out / ga.JSON_NAME).read_text())
    assert data["rows"] == json.loads(json.dumps(rows, default=str))
    assert data["failed_checks"] == [] and data["meta"]["quick"] is True
    assert data["meta"]["torch"] == torch.__version__
    checks = [r for r in rows if r["section"] == "correctness"]
    assert {r["name"] for r in checks if r["status"] == "pass"} == {
        "resident_pad_crop_cpu_vs_cpu", "resident_random_resized_crop_cpu_vs_cpu",
        "deterministic_same_weights_twice", "amp_bf16_best_test_acc",
        "evaluation_full_precision", "compiled_step_loss_vs_eager",
        "kill_and_resume_equals_uninterrupted"}
    assert not [r for r in rows if r["status"] == "error"]
    sections = [r["section"] for r in rows]
    assert sections == sorted(sections, key=["correctness", "throughput", "stages",
                                             "summary"].index)  # the order
    by_name = {r["name"]: r for r in rows}
    assert by_name["small_cnn_L1_resident_eager_train"]["value"] > 0
    assert 0 <= by_name["small_cnn_L1_dataloader_eager_wait_share"]["value"] <= 1
    for unit in ("train_1_epoch_unit", "hessian_paper_unit_90_steps_10000_images",
                 "hessian_default_unit_reduced", "probes_unit", "cka_paper_unit_2_seeds"):
        assert by_name[unit]["status"] == "measured" and by_name[unit]["value"] >= 0, unit
    total = by_name["paper_grid_cifar10_gpu_hours"]
    assert total["value"] > 0 and "not a GPU figure" in total["note"]
    md = (out / ga.MD_NAME).read_text()
    assert md in printed and "| correctness | deterministic_same_weights_twice |" in md
    assert "0 failed" in md


def _ctx(tmp_path, clock, budget=100.0):
    return ga.Context(torch.device("cpu"), ga.Sizes.quick(), True, tmp_path, clock=clock,
                      total_budget_s=budget)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _item(name, clock, cost, estimate, log):
    def fn(ctx):
        log.append(name)
        clock.t += cost
        return [ga.row("s", name, cost, "s")]
    return ga.Item(name, fn, estimate)


def test_items_run_in_order_and_what_would_not_fit_is_skipped(tmp_path):
    clock, ran, written = FakeClock(), [], []
    sections = [
        ga.Section("a", 10, [_item("a1", clock, 4, 3, ran), _item("a2", clock, 4, 5, ran),
                             _item("a3", clock, 1, 3, ran)]),  # a2 fits (4+5<=10), a3 not
        ga.Section("b", 50, [_item("b1", clock, 30, 20, ran), _item("b2", clock, 1, 70, ran),
                             _item("b3", clock, 5, 5, ran)]),  # b2 over the total
        ga.Section("c", 1, [_item("c1", clock, 0, 5, ran)], always=True),
    ]
    rows = ga.run_sections(sections, _ctx(tmp_path, clock, budget=60),
                           lambda r: written.append(len(r)))
    assert ran == ["a1", "a2", "b1", "b3", "c1"]
    assert [(r["name"], r["status"]) for r in rows] == [
        ("a1", "measured"), ("a2", "measured"), ("a3", "skipped"), ("b1", "measured"),
        ("b2", "skipped"), ("b3", "measured"), ("c1", "measured")]
    assert "estimated 3 s, 2 s left of the section's 10 s" in rows[2]["note"]
    assert "22 s of the total 60 s" in rows[4]["note"]
    assert written == [1, 2, 3, 4, 5, 6, 7]  # the files are rewritten after every item


def test_a_failing_or_crashing_check_makes_the_exit_status_non_zero(tmp_path, monkeypatch):
    clock = FakeClock()

    def crash(ctx):
        raise RuntimeError("cuDNN said no\nsecond line")

    checks = ga.Section("correctness", 10, [
        ga.Item("fine", lambda c: [ga.row("correctness", "fine", True, check=True)]),
        ga.Item("crash", crash)], checks=True)
    measure = ga.Section("throughput", 10, [ga.Item("boom", crash)])
    rows = ga.run_sections([checks, measure], _ctx(tmp_path, clock), lambda r: None)
    assert [(r["name"], r["status"]) for r in rows] == [
        ("fine", "pass"), ("crash", "fail"), ("boom", "error")]
    assert rows[1]["note"] == "RuntimeError: cuDNN said no"
    assert ga.exit_status(rows) == 1 and ga.exit_status(rows[:1] + rows[2:]) == 0
    # through main: outputs written, the table printed, then exit status 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ga, "sections", lambda sizes, cuda: [checks])
    with pytest.raises(SystemExit) as e:
        ga.main(["--quick", "--out", str(tmp_path / "o")])
    assert e.value.code == 1
    data = json.loads((tmp_path / "o" / ga.JSON_NAME).read_text())
    assert data["failed_checks"] == ["crash"]
    assert "1 failed (crash)" in (tmp_path / "o" / ga.MD_NAME).read_text()


def test_without_cuda_the_full_command_says_so_and_runs_the_quick_checks(
        tmp_path, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ga, "run_sections", lambda s, ctx, w: seen.append(ctx) or [])
    assert ga.main(["--out", str(tmp_path)]) == []
    (ctx,) = seen
    assert ctx.quick and ctx.device.type == "cpu" and ctx.sizes == ga.Sizes.quick()
    assert capsys.readouterr().out.splitlines()[0] == ga.NO_CUDA_LINE


def test_on_cuda_the_full_run_needs_out_and_uses_the_full_sizes(tmp_path, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ga, "meta", lambda ctx: {"device_name": "H100 (mocked)", "device": "cuda",
                                                 "torch": "t", "cuda": "c", "cudnn": 1,
                                                 "cpus": 1, "date": "d", "command": "x",
                                                 "quick": False, "total_budget_s": 480})
    monkeypatch.setattr(ga, "run_sections", lambda s, ctx, w: seen.append((s, ctx)) or [])
    with pytest.raises(SystemExit) as e:
        ga.main([])
    assert e.value.code == 2 and "--out DIR is required" in capsys.readouterr().err
    ga.main(["--out", str(tmp_path)])
    ((secs, ctx),) = seen
    assert not ctx.quick and ctx.device == torch.device("cuda") and ctx.sizes == ga.Sizes()
    assert ga.NO_CUDA_LINE not in capsys.readouterr().out
    assert [s.name for s in secs] == ["correctness", "throughput", "stages", "summary"]
    names = [i.name for i in secs[1].items]
    # eager resident first (the summary needs them); compiling takes minutes: one model
    # before the multi-process runs, the others last
    assert names[:4] == ["resnet50_L1_resident_eager", "resnet50_L4_resident_eager",
                         "vgg19_L1_resident_eager", "vgg19_L4_resident_eager"]
    assert names[8:] == ["resnet50_L1_resident_compiled", "runs_per_gpu_1", "runs_per_gpu_2",
                         "runs_per_gpu_4", "vgg19_L1_resident_compiled",
                         "resnet50_L4_resident_compiled", "vgg19_L4_resident_compiled"]
    assert sum(s.budget_s for s in secs) <= ga.DEFAULT_BUDGET_S


def test_paper_grid_hours_from_measured_rates():
    train = {("resnet50", 1): 5000.0, ("resnet50", 4): 25000.0,
             ("vgg19", 1): 10000.0, ("vgg19", 4): 50000.0}
    evals = {k: 4 * v for k, v in train.items()}
    g = ga.paper_grid_hours(train, evals, hessian_paper_unit_s=300.0, cka_2seeds_s=6.0)
    cells = {(c["arch"], c["pool_level"]): c for c in g["cells"]}
    assert cells[("resnet50", 1)]["epoch_s"] == pytest.approx(50000 / 5000 + 10000 / 20000)
    e4 = 50000 / 25000 + 10000 / 100000
    assert cells[("resnet50", 4)]["epoch_s"] == pytest.approx(e4)
    e1 = 10.5
    assert cells[("resnet50", 2)]["epoch_s"] == pytest.approx(e1 + (e4 - e1) / 3)
    assert g["interpolated"] == ["vgg19 L2", "vgg19 L3", "resnet50 L2", "resnet50 L3"]
    assert g["runs"] == 40 and g["missing"] == []
    c = cells[("resnet50", 1)]
    assert c["train_h"] == pytest.approx(5 * 200 * e1 / 3600)
    assert c["finetune_h"] == pytest.approx(5 * 5 * 10 * e1 / 3600)
    assert c["hessian_paper_h"] == pytest.approx(5 * 2 * 300 / 3600)  # the reference cell
    assert c["cka_h"] == pytest.approx(10 * 6 / 3600)
    v = cells[("vgg19", 4)]
    assert v["hessian_paper_h"] == pytest.approx(5 * 2 * 300 * (v["epoch_s"] / e1) / 3600)
    assert g["total"]["total_h"] == pytest.approx(sum(c["total_h"] for c in g["cells"]))
    assert g["total"]["train_h"] == pytest.approx(
        sum(1000 * c["epoch_s"] for c in g["cells"]) / 3600)
    partial = ga.paper_grid_hours(train, evals)
    assert partial["missing"] == ["hessian_paper", "cka"]
    assert partial["total"]["total_h"] == pytest.approx(
        partial["total"]["train_h"] + partial["total"]["finetune_h"])


def test_levels_are_interpolated_between_and_held_outside_the_measured_ones():
    assert ga.interpolate_levels({1: 10.0, 4: 4.0}, [1, 2, 3, 4]) == {
        1: 10.0, 2: 8.0, 3: 6.0, 4: 4.0}
    assert ga.interpolate_levels({2: 5.0}, [1, 2, 3]) == {1: 5.0, 2: 5.0, 3: 5.0}


def test_paper_hessian_extrapolation_drops_the_warm_up_unit():
    per, fixed, unit = ga.extrapolate_steps({2: 50.0, 3: 7.0, 5: 11.0}, 90, scale=10)
    assert (per, fixed) == (pytest.approx(2.0), pytest.approx(1.0))
    assert unit == pytest.approx(1.0 + 90 * 2.0 * 10)
    assert ga.extrapolate_steps({2: 9.0, 3: 9.0, 4: 8.0}, 90)[:2] == (0.0, 9.0)  # clamped


def test_memory_rows_put_the_measured_peak_beside_the_estimate(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: 3 * gib)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d=None: 4 * gib)
    rows = ga.memory_rows("throughput", "resnet50_L1", 6 * gib, torch.device("cuda"))
    alloc, reserved = rows
    assert (alloc["name"], alloc["value"], alloc["unit"]) == (
        "resnet50_L1_gpu_memory_peak_allocated", 3.0, "GiB")
    assert reserved["value"] == 4.0 and reserved["estimate_gib"] == 6.0
    assert reserved["estimate_over_reserved"] == 1.5
    assert reserved["note"] == ("estimate 6.00 GiB (incl. a 0.59 GiB context) = 1.50x the "
                                "measured reserved peak")
    (cpu,) = ga.memory_rows("throughput", "x", gib, torch.device("cpu"))
    assert cpu["status"] == "skipped" and cpu["estimate_gib"] == 1.0
    md = ga.markdown({"device_name": "H100", "device": "cuda", "gpu_memory_gib": 79.6,
                      "torch": "2.14.1", "cuda": "13.0", "cudnn": 91000, "cpus": 16,
                      "date": "d", "command": "c", "quick": False, "total_budget_s": 480,
                      "elapsed_s": 12}, rows)
    assert "| throughput | resnet50_L1_gpu_memory_peak_reserved | 4 | GiB | measured |" in md
    assert md.startswith("GPU acceptance (issue 23): H100 (cuda, 79.6 GiB), torch 2.14.1, "
                         "CUDA 13.0")


def test_a_compile_failure_is_a_pass_when_the_fallback_is_logged(tmp_path, monkeypatch):
    def broken(model, **kw):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    ctx = ga.Context(torch.device("cpu"), ga.Sizes.quick(), True, tmp_path)
    (r,) = ga.check_compile(ctx)
    assert (r["name"], r["status"]) == ("compiled_step_fallback", "pass")
    assert r["value"] == "RuntimeError: no C++ compiler found"
    assert r["note"] == "fell back to eager, reason logged: True"


def test_the_summary_says_when_no_rate_was_measured(tmp_path):
    ctx = ga.Context(torch.device("cpu"), ga.Sizes.quick(), True, tmp_path)
    (r,) = ga.summary_rows(ctx)
    assert r["status"] == "skipped" and "no training rate" in r["note"]


def test_a_shared_gpu_worker_trains_after_the_barrier_and_reports_its_window(tmp_path):
    # what each of the k spawned processes runs, here in this process: spawning two took
    # 26-55 s on this machine (measure_runs_per_gpu(ctx, 2) on the CPU passed 4 times)
    import queue
    import threading

    ctx = ga.Context(torch.device("cpu"), ga.Sizes.quick(), True, tmp_path)
    ga._ensure_tree(ctx)
    results = queue.Queue()
    ga._share_worker(str(ctx.tree), "small_cnn", 1, 0.125, 16, 1, 2, "cpu", 1,
                     threading.Barrier(1), results)
    status, images, start, end, peak = results.get_nowait()
    assert (status, images, peak) == ("ok", 32, 0) and end > start
    results = queue.Queue()
    ga._share_worker(str(ctx.tree), "small_cnn", 1, 0.125, 16, 1, 2, "no_such_device", 1,
                     threading.Barrier(1), results)
    status, why, *_ = results.get_nowait()
    assert status == "error" and "no_such_device" in why  # reported, not raised


def test_the_aggregate_rate_counts_every_image_over_the_shared_window():
    out = [("ok", 1000, 10.0, 12.0, 0), ("ok", 600, 10.5, 14.0, 0)]
    assert ga.aggregate_rate(out) == pytest.approx(1600 / 4.0)
