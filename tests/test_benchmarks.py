"""Smoke runs of the benchmark harness at tiny sizes, so it cannot rot (no timing asserted)."""

import json

from benchmarks.__main__ import BENCHMARKS
from benchmarks.__main__ import main as bench_main


def test_quick_benchmarks_compute_the_same_thing_on_both_sides(tmp_path):
    out_file = tmp_path / "results.jsonl"
    out = bench_main(["pruning_selection", "importance_batched", "--quick", "--record",
                      "--out", str(out_file)])
    (prune,) = out["pruning_selection"]
    assert prune["pruned"] == round(0.9 * prune["weights"])
    assert prune["differing_weights"] <= 2  # only exact ties at the threshold may differ
    (imp,) = out["importance_batched"]
    assert imp["same"] is True and imp["speedup"] > 0
    lines = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert [r["benchmark"] for r in lines] == ["pruning_selection", "importance_batched"]
    assert lines[0]["machine"]["torch"] and lines[0]["command"].endswith("--out " + str(out_file))


def test_hessian_benchmark_quick_agrees_with_the_exact_spectrum():
    rows = bench_main(["hessian_topk", "--quick"])["hessian_topk"]
    ours = [r for r in rows if r["backend"] == "lanczos"]
    assert ours and all(r["max_err"] <= 1e-4 for r in ours)
    assert {"pyhessian", "scipy eigsh tol=1e-06", "scipy eigsh tol=0"} <= {r["backend"] for r in rows}


def test_all_names_are_registered():
    assert set(BENCHMARKS) == {"train_overhead", "pruning_selection", "importance_batched",
                               "hessian_topk"}


def test_trainer_and_minimal_loop_compute_the_same_weights():
    (row,) = bench_main(["train_overhead", "--quick"])["train_overhead"]
    assert row["same"] is True and row["ratio"] > 0 and 0 <= row["data_loading_share"]
