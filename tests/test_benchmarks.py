"""Smoke runs of the benchmark harness at tiny sizes, so it cannot rot (no timing asserted)."""

import json

import pytest
import torch
from torch import nn

from benchmarks.__main__ import BENCHMARKS
from benchmarks.__main__ import main as bench_main
from landscape.stages import stage_names


def test_quick_benchmarks_compute_the_same_thing_on_both_sides(tmp_path):
    out_file = tmp_path / "results.jsonl"
    out = bench_main(["pruning_selection", "importance_batched", "--quick", "--record",
                      "--out", str(out_file)])
    (prune,) = out["pruning_selection"]
    assert prune["pruned"] == round(0.9 * prune["weights"])
    assert prune["differing_weights"] <= 2  # only exact ties at the threshold may differ
    imp = out["importance_batched"]
    assert [r["dtype"] for r in imp] == ["float32", "float64"]
    assert all(r["same"] is True and r["speedup"] > 0 for r in imp)
    lines = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert [r["benchmark"] for r in lines] == ["pruning_selection", "importance_batched"]
    assert lines[0]["machine"]["torch"] and lines[0]["command"].endswith("--out " + str(out_file))


def test_results_load_benchmark_quick_gives_equal_frames_both_ways():
    (row,) = bench_main(["results_load", "--quick"])["results_load"]
    assert row["units"] == 24 and row["rows"] == 24 * 50 and row["equal"] is True
    assert row["one_conversion_seconds"] > 0 and row["per_unit_seconds"] > 0


def test_hessian_journal_benchmark_quick_saves_every_vector_and_changes_nothing():
    (row,) = bench_main(["hessian_journal", "--quick"])["hessian_journal"]
    assert row["equal"] is True and row["steps"] == 3
    assert row["vector_mb"] * 2**20 >= 4 * row["parameters"]  # one float32 vector, written
    assert row["plain_seconds_per_step"] > 0 and row["hvp_seconds_batch10"] > 0


def test_folder_data_benchmark_quick_reads_every_image_at_its_size_on_both_paths():
    rows = bench_main(["folder_data", "--quick"])["folder_data"]
    assert [r["side"] for r in rows] == ["dataloader, 0 workers", "dataloader, 2 workers",
                                         "resident"]
    assert all(r["images"] == 40 and r["shape"] == [3, 32, 32] and r["images_per_s"] > 0
               for r in rows)
    assert rows[-1]["decode_seconds"] > 0


def test_hessian_benchmark_quick_agrees_with_the_exact_spectrum():
    rows = bench_main(["hessian_topk", "--quick"])["hessian_topk"]
    ours = [r for r in rows if r["backend"] == "lanczos"]
    assert ours and all(r["max_err"] <= 1e-4 for r in ours)
    assert {"pyhessian", "scipy eigsh tol=1e-06", "scipy eigsh tol=0",
            "ours tol=0.0001"} <= {r["backend"] for r in rows}
    stage_tol = next(r for r in rows if r["backend"] == "ours tol=0.0001")
    assert stage_tol["max_err"] <= 1e-4 * 10  # tol is relative to lambda_max, errors to each


def test_all_names_are_registered():
    assert set(BENCHMARKS) == {"train_overhead", "pruning_selection", "importance_batched",
                               "hessian_topk", "cka", "demo_scaling", "paper_importance",
                               "loss_slice", "saturation", "data_path", "rf_table", "probes",
                               "lambda_tracking", "model_zoo", "layouts", "rf_audit",
                               "stage_zoo", "gpu_acceptance", "pruning_criteria", "results_load",
                               "hessian_journal", "folder_data"}


def test_pruning_criteria_quick_times_every_builtin_criterion_on_both_architectures():
    rows = bench_main(["pruning_criteria", "--quick"])["pruning_criteria"]
    assert [(r["arch"], r["criterion"]) for r in rows] == [
        (a, c) for a in ("resnet18", "vgg19")
        for c in ("magnitude", "random", "magnitude_gradient", "obd", "grasp", "synflow")]
    assert all(r["seconds"] > 0 and r["vs_one_backward"] > 0 for r in rows)
    zoo = bench_main(["pruning_criteria", "--quick", "--", "--zoo"])["pruning_criteria"]
    assert [(r["model"], r["criterion"], r["ok"]) for r in zoo] == [
        ("timm:test_resnet", c, True) for c in ("obd", "grasp", "synflow")]


def test_probes_benchmark_quick_scores_both_backends_on_the_same_features():
    rows = bench_main(["probes", "--quick"])["probes"]
    assert [r["features"] for r in rows] == [64, 256]
    for r in rows:
        assert (r["n_train"], r["n_test"], r["classes"]) == (300, 100, 10)
        assert r["torch_converged"] and r["sklearn_converged"]
        assert r["acc_diff_points"] == pytest.approx(100 * (r["torch_acc"] - r["sklearn_acc"]))
        assert abs(r["acc_diff_points"]) <= 5  # one objective; near-separable at 256
        assert r["torch_seconds"] > 0 and r["speedup"] == pytest.approx(
            r["sklearn_seconds"] / r["torch_seconds"])


def test_data_path_benchmark_reads_the_same_pixels_on_both_paths():
    rows = bench_main(["data_path", "--quick"])["data_path"]
    assert [r["path"] for r in rows] == ["resident", "dataloader_0_workers",
                                         "dataloader_2_workers"]
    assert all(r["same_eval_pixels"] is True and r["images_per_s"] > 0 for r in rows)
    assert 0 <= rows[0]["train_wait_share"] <= 1


def test_rf_table_benchmark_quick_analyses_every_model_it_lists():
    rows = bench_main(["rf_table", "--quick"])["rf_table"]
    *models, summary = rows
    assert [r["model"] for r in models] == ["resnet18", "mobilenet_v3_small", "squeezenet1_1",
                                            "shufflenet_v2_x0_5"]
    assert summary["failures"] == 0 and all(r["seconds"] > 0 for r in models)
    assert {r["model"]: r["r_tilde"] for r in models if r["agrees"] is not None} == {
        "resnet18": 139, "mobilenet_v3_small": 303}
    assert summary["disagree"] == []


def test_rf_table_benchmark_samples_timm_models_at_a_small_size():
    pytest.importorskip("timm")
    *models, summary = bench_main(["rf_table", "--quick", "--", "--source", "timm",
                                   "--size", "32"])["rf_table"]
    assert [r["model"] for r in models] == ["resnet18", "resnet50d", "seresnext26d_32x4d",
                                            "efficientnet_b0"]
    assert summary["failures"] == 0 and summary["target_met"] is None
    assert all(r["reference"] is None for r in models)  # the references are torchvision's


def test_trainer_and_minimal_loop_compute_the_same_weights():
    (row,) = bench_main(["train_overhead", "--quick"])["train_overhead"]
    assert row["same"] is True and row["ratio"] > 0 and 0 <= row["data_loading_share"]


@pytest.mark.slow
def test_cka_benchmark_quick_agrees_with_torch_cka_in_float64():
    rows = bench_main(["cka", "--quick"])["cka"]
    f64, f32 = (r for r in rows if r["part"] == "a")
    assert f64["dtype"] == "float64" and f64["max_abs_diff"] <= 1e-9
    assert f32["ours_err_vs_float64"] <= 1e-6  # float64 centring: float32 features suffice
    assert f64["torch_cka_mislabelled_rows"] == 0 and f64["layers"] == 20
    assert all(r[k] > 0 for r in (f64, f32) for k in ("ours_seconds", "torch_cka_seconds",
                                                       "forwards_seconds"))
    overhead = [r for r in rows if r["part"] == "b"]
    assert {r["estimator"] for r in overhead} == {"biased (full)", "minibatch m=16"}
    assert all(r["cka_seconds"] > 0 and r["gram_vs_forward_flops"] > 0 for r in overhead)


@pytest.mark.slow
def test_demo_scaling_quick_times_every_stage_and_counts_flops():
    rows = bench_main(["demo_scaling", "--quick"])["demo_scaling"]
    (grid,) = [r for r in rows if r["part"] == "demo_grid"]
    assert grid["wall_seconds"] > 0
    stages = {r["stage"] for r in rows if r["part"] == "demo_stage"}
    assert stages == set(stage_names())  # every registered stage, cell-level ones included
    (scale,) = [r for r in rows if r["part"] == "scaling"]
    # a training step (forward + backward) costs about 3 forwards; 64x64 about 4x 32x32
    assert 3 < scale["tiny_imagenet_step_gflops_per_image"] / scale["cifar10_step_gflops_per_image"] < 5
    assert scale["cifar10_step_seconds"] > 0 and scale["params"] > 0


def test_loss_slice_quick_agrees_with_the_copy_loop_and_loss_landscapes():
    (row,) = bench_main(["loss_slice", "--quick"])["loss_slice"]
    assert row["weights_restored_exactly"] is True
    assert row["max_abs_diff_vs_copy_loop"] <= 1e-5
    assert row["max_abs_diff_vs_loss_landscapes"] <= 1e-4  # its accumulated += / -= steps
    assert row["points"] == 25 and row["ours_seconds"] > 0


def test_lambda_tracking_quick_warm_agrees_with_cold_at_fewer_hvps():
    rows = bench_main(["lambda_tracking", "--quick"])["lambda_tracking"]
    epochs, (summary,) = rows[:-1], rows[-1:]
    assert [r["epoch"] for r in epochs] == [1, 2, 3] and all(r["converged"] for r in epochs)
    assert [r["warm_started"] for r in epochs] == [False, True, True]
    assert max(r["rel_diff"] for r in epochs) <= 1e-3  # both to the same tolerance
    assert all(r["hvp_warm"] < r["hvp_cold"] for r in epochs[1:])
    assert summary["hvp_ratio_cold_over_warm"] > 1


def test_model_zoo_benchmark_trains_and_measures_transformers_too():
    """A CNN, torchvision's SwinV2 (F.normalize on padded windows: NaN HVPs before) and timm's
    small ViT / CoAtNet (fused attention: no double backward before), at 32 px."""
    pytest.importorskip("timm")
    *models, summary = bench_main(["model_zoo", "--quick"])["model_zoo"]
    assert [r["model"] for r in models] == ["torchvision:resnet18", "torchvision:swin_v2_t",
                                            "timm:test_vit", "timm:test_coatnet"]
    assert all(r["failure"] is None and r["hvp_s"] > 0 for r in models), models
    assert summary["ok"] == summary["tried"] == 4
    assert all(0 <= r["split_gap"] < 1e-12 for r in models)  # float64 round-off only
    assert all(r["reload_gap"] == 0 for r in models)  # the checkpoint holds the whole model
    assert all(r["channels_last_gap"] < 1e-4 for r in models)  # CUDA's memory format
    rf = {r["model"]: (r["rf"], r["global_mixing"]) for r in models}  # the identity's columns
    assert rf["torchvision:resnet18"] == (435, False) and rf["timm:test_vit"] == (16, True)
    assert summary["rf_known"] == 4 and summary["rf_unknown"] == []


@pytest.mark.parametrize("persistent", [True, False])
def test_model_zoo_reload_check_finds_state_the_checkpoint_leaves_out(persistent):
    """A buffer training changes but the state_dict leaves out (``persistent=False``) makes a
    reloaded model another network: the zoo's reload gap finds it."""
    from benchmarks.model_zoo import RELOAD_TOL, reload_gap

    class Drift(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.register_buffer("shift", torch.zeros(2, 1, 1), persistent=persistent)

        def forward(self, x):
            if self.training:
                self.shift += 1.0  # a running statistic
            return self.conv(x) + self.shift

    model, x = Drift(), torch.randn(2, 1, 5, 5)
    model.train()(x)
    gap = reload_gap(model, Drift, x)
    assert (gap == 0) if persistent else (gap > 1e3 * RELOAD_TOL)


def test_layouts_benchmark_quick_finds_the_two_readings_agree():
    """The capture and the RF analysis read every map of ConvNeXt (channels-last blocks) and
    MambaOut (split / cat gates) alike."""
    pytest.importorskip("timm")
    *models, summary = bench_main(["layouts", "--quick"])["layouts"]
    assert [m["failure"] for m in models] == [None, None]
    assert all(m["compared"] > 20 and m["channels_last"] > 5 for m in models)
    assert summary["disagreeing"] == [] and summary["compared"] == 2


def test_rf_audit_benchmark_quick_finds_the_tables_equal_the_gradients():
    """ResNet18 and ConvNeXt (channels-last blocks): the analytic boxes of four positions of
    their deepest map that fits 224 px equal their input gradients'."""
    pytest.importorskip("timm")
    *models, summary = bench_main(["rf_audit", "--quick"])["rf_audit"]
    assert [m["verdict"] for m in models] == ["equal", "equal"]
    assert summary["equal"] == 2 and summary["exceeds"] == summary["inside"] == []


def test_rf_audit_detaches_gates_and_flags_a_missed_path(monkeypatch):
    """An SE gate's pooled operand adds no path under se_gates="scale": detached, the
    gradient box is the local one; a table that misses a path is "exceeds"."""
    import torch
    from torch import nn

    from benchmarks.rf_audit import OFFSETS, _result, audit, verdict
    from landscape.receptive_field import rules
    from landscape.receptive_field.geometry import Window

    class Gated(nn.Module):  # an SE gate, a GroupNorm over positions, a zero gain
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 5, padding=2)
            self.norm, self.c = nn.GroupNorm(1, 2), nn.Conv2d(2, 2, 3, padding=1)
            self.gain = nn.Parameter(torch.zeros(2, 1, 1))

        def forward(self, x):
            y = self.norm(self.a(x))
            y = self.b(y * torch.sigmoid(y.mean((2, 3), keepdim=True)))
            return y + self.gain * self.c(y)

    got = audit(Gated(), 32)
    assert got["gates"] == 2 and got["verdict"] == "equal"
    assert got["analytic"] == ((12, 20), (12, 20))  # position 15 of 30: 3 + 4 + 2 = 9 px
    # a wrong rule (the 5x5 conv read as 3x3, same output size): the gradient exceeds it
    right = rules.module_window
    monkeypatch.setattr(rules, "module_window", lambda mod, where: Window(
        "conv", (3, 3), (1, 1), (1, 1)) if getattr(mod, "kernel_size", None) == (5, 5)
        else right(mod, where))
    wrong = audit(Gated(), 32)
    assert wrong["verdict"] == "exceeds" and wrong["analytic"] == ((13, 19), (13, 19))
    assert wrong["measured"] == ((12, 20), (12, 20))
    assert verdict(((3, 9), (3, 9)), ((2, 9), (3, 9))) == "exceeds"
    assert verdict(((3, 9), (3, 9)), ((4, 9), (3, 9))) == "inside"
    assert verdict(((3, 9), (3, 9)), (None, None)) == "inside"
    # four positions, one batch element each: the worst verdict, the position it is at
    spans = [((3 + k, 9 + k),) * 2 for k in OFFSETS]
    boxes = list(spans)
    assert _result("a", "fx", spans, boxes, 0)["verdict"] == "equal"
    boxes[OFFSETS.index(-1)] = ((1, 8), (2, 8))  # one phase reads a row more
    row = _result("a", "fx", spans, boxes, 0)
    assert (row["verdict"], row["position"], row["measured"]) == ("exceeds", -1, ((1, 8), (2, 8)))


def test_rf_audit_of_a_model_fx_cannot_trace_uses_the_recorded_forward():
    """Control flow on a shape stops torch.fx; the audit then reads the recorded forward the
    table comes from, among leaf-module outputs (the ReLU and max-pool modules linearised)."""
    from torch import nn

    from benchmarks.rf_audit import audit

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 5, stride=2)
            self.act, self.pool = nn.ReLU(), nn.MaxPool2d(3, 1, 1)

        def forward(self, x):
            x = self.pool(self.act(self.a(x)))
            if x.shape[-1] > 8:
                x = self.b(x)
            return x

    got = audit(Branchy(), 32)
    assert got["trace"] == "recorded" and got["layer"] == "b" and got["verdict"] == "equal"
    assert got["analytic"] == ((12, 20), (12, 20))  # 3, +2 (pool), +4 (b): 9 px


def test_stage_zoo_runs_every_unit_and_names_what_stopped_a_model(tmp_path):
    """The quick run measures a tiny timm model in every run stage (the units derived from the
    RF analysis included); a refused model's row carries its one-line reason."""
    pytest.importorskip("timm")
    from benchmarks.stage_zoo import CELL_STAGES, _one, command

    *models, summary = bench_main(["stage_zoo", "--quick"])["stage_zoo"]
    assert summary["ok"] == 1 and not summary["crashed"], models
    units = set(models[0]["units"])
    assert {"train", "hessian_final", "importance_final", "importance_rf", "probes_final",
            "probes_border", "receptive_field", "resolution_final"} <= units
    assert any(u.startswith("finetune_") for u in units)
    two = command("timm:test_resnet", 16, tmp_path, seeds=2)  # a multirun with CKA and more
    assert two[3:5] == ["-m", "seed=0,1"] and set(CELL_STAGES) <= set(two)
    assert not set(CELL_STAGES) & set(command("timm:test_resnet", 16, tmp_path))
    row = _one("timm:no_such_model", 16, tmp_path, timeout=120)
    assert row["rc"] == 2 and row["units"] == []
    assert row["stopped"].startswith("landscape-run: error:") and "no_such_model" in row["stopped"]
