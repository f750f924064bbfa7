import dataclasses

import pytest

from landscape.config import ModelConfig, RunConfig, identity_dict
from landscape.data import DataConfig
from landscape.identity import cell_hash, identify
from landscape.models import InputTooSmallError
from landscape.train import TrainConfig


def cell_name(c: RunConfig) -> str:
    return identify(c).cell_name


def cfg(**model) -> RunConfig:
    return RunConfig(model=ModelConfig(name="vgg19", width=0.125, **model),
                     data=DataConfig(name="digits", image_size=16))


def test_seed_and_execution_fields_do_not_change_the_cell():
    a = cfg(pool_level=2)
    b = dataclasses.replace(a, seed=3, results_root="/elsewhere", device="cpu", progress=False,
                            data=dataclasses.replace(a.data, root="/data", num_workers=8,
                                                     download=True))
    assert cell_hash(a) == cell_hash(b)
    assert identify(a).cell_name == identify(b).cell_name
    assert identify(b).run_id == f"{cell_name(a)}/seed=3"


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


def test_step_schedule_settings_enter_the_hash_only_when_changed():
    c = cfg(pool_level=2)
    step = dataclasses.replace(c, train=TrainConfig(scheduler="step"))
    assert identity_dict(step) == {**identity_dict(c), "train.scheduler": "step"}
    explicit = dataclasses.replace(c, train=TrainConfig(scheduler="step", milestones=[1 / 3, 2 / 3],
                                                        gamma=0.1))
    assert cell_hash(explicit) == cell_hash(step) != cell_hash(c)
    later = dataclasses.replace(c, train=TrainConfig(scheduler="step", milestones=[0.5, 0.75]))
    assert cell_hash(later) != cell_hash(step)


def test_hash_is_stable_across_versions():
    # Changing this value orphans every existing results folder: do it only on purpose.
    assert cell_name(cfg(pool_level=2)) == "vgg19-w0.125-digits-pool2-" + cell_hash(cfg(pool_level=2))
    assert cell_hash(cfg(pool_level=2)) == "a669c60cd5"


def test_custom_pool_gets_a_readable_prefix():
    assert cell_name(cfg(pool_level=0, pool_kernel=4, pool_stride=1)).startswith(
        "vgg19-w0.125-digits-poolk4s1p0-")
    assert identify(cfg(pool_level=1)).run_id.endswith("/seed=0")


def test_identity_is_the_one_source_of_the_identity_columns():
    """Pool resolved once, RF and parameter count read off the model built on the meta device
    (vgg19 level 2: analytic RF 359, DESIGN.md §2), seed None for the cell."""
    ident = identify(cfg(pool_level=2))
    cols = ident.columns()
    assert cols == {"run_id": ident.run_id, "arch": "vgg19", "dataset": "digits",
                    "pool_level": 2, "pool_kernel": 3, "pool_stride": 2, "pool_padding": 1,
                    "receptive_field": 359, "width": 0.125, "seed": 0, "arch_variant": None,
                    "image_size": 16, "resize": "direct", "global_mixing": False}
    model = ident.build_model()
    assert next(model.parameters()).device.type == "cpu"
    assert ident.num_params == sum(p.numel() for p in model.parameters())
    cell = ident.with_seed(None)
    assert cell.columns()["seed"] is None and cell.run_id == ident.cell_name
    custom = identify(cfg(pool_level=0, pool_kernel=4, pool_stride=1)).columns()
    assert (custom["pool_level"], custom["pool_kernel"], custom["pool_stride"]) == (0, 4, 1)


def test_an_impossible_pool_is_refused_when_the_identity_is_built():
    with pytest.raises(InputTooSmallError, match="pool level 4.*16x16"):
        identify(cfg(pool_level=4))
