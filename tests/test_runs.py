import dataclasses

from landscape.config import ModelConfig, RunConfig, identity_dict
from landscape.data import DataConfig
from landscape.runs import cell_hash, cell_name, run_paths
from landscape.train import TrainConfig


def cfg(**model) -> RunConfig:
    return RunConfig(model=ModelConfig(name="vgg19", width=0.125, **model),
                     data=DataConfig(name="digits", image_size=16))


def test_seed_and_execution_fields_do_not_change_the_cell():
    a = cfg(pool_level=2)
    b = dataclasses.replace(a, seed=3, results_root="/elsewhere", device="cpu", progress=False,
                            data=dataclasses.replace(a.data, root="/data", num_workers=8,
                                                     download=True))
    assert cell_hash(a) == cell_hash(b)
    assert run_paths(a).cell.name == run_paths(b).cell.name == cell_name(a)
    assert run_paths(b).run.name == "seed=3"


def test_what_is_computed_changes_the_cell():
    base = cell_hash(cfg(pool_level=2))
    assert base != cell_hash(cfg(pool_level=3))
    assert base != cell_hash(cfg(pool_level=2, pool_kernel=5))
    c = cfg(pool_level=2)
    assert base != cell_hash(dataclasses.replace(c, train=TrainConfig(lr=0.01)))
    assert base != cell_hash(dataclasses.replace(c, data=DataConfig(name="digits", image_size=32)))


def test_defaults_are_omitted_and_numbers_normalised():
    assert identity_dict(RunConfig()) == {}
    explicit = RunConfig(model=ModelConfig(width=1), train=TrainConfig(epochs=200))
    assert cell_hash(explicit) == cell_hash(RunConfig())
    assert identity_dict(cfg(pool_level=2)) == {
        "model.name": "vgg19", "model.width": 0.125, "model.pool_level": 2,
        "data.image_size": 16,
    }


def test_hash_is_stable_across_versions():
    # Changing this value orphans every existing results folder: do it only on purpose.
    assert cell_name(cfg(pool_level=2)) == "vgg19-w0.125-digits-pool2-" + cell_hash(cfg(pool_level=2))
    assert cell_hash(cfg(pool_level=2)) == "a669c60cd5"


def test_custom_pool_gets_a_readable_prefix():
    assert cell_name(cfg(pool_level=0, pool_kernel=4, pool_stride=1)).startswith(
        "vgg19-w0.125-digits-poolk4s1p0-")
    assert run_paths(cfg(pool_level=1)).run_id.endswith("/seed=0")
