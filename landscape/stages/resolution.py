"""Resolution stage: a trained checkpoint evaluated at other input sizes ("Size Matters": train
at one size, test at many).

Unit ``resolution_<checkpoint>``. For every size in ``resolution.sizes`` the test split is
loaded as the run's data would be at ``data.image_size=<size>`` (each dataset resizes from its
own source images) with, by ``resolution.resize``, either ``data.resize=direct`` (``direct``,
the default: a run trained with ``down_up`` or ``canvas`` is tested on the plain images) or
the run's own protocol (``same``: ``down_up`` keeps its ``data.down_size``, ``canvas`` its
pasted image's size, so only the output size or the canvas around the object changes),
normalised with the statistics of the run's own data (what the network was trained on), and
evaluated by the one evaluation policy of every accuracy (``landscape.train.evaluate``: eval
mode, full precision). At the training size, when the protocol is the run's own (a
``direct`` run, or ``same``), the run's own test split is used, so that row equals the
training's evaluation of the checkpoint.
Rows ``resolution_test_acc`` and ``resolution_test_loss`` with ``index`` = the input size.

A timm or torchvision model built for the training size (a ViT: its token grid and position
tables are fixed when it is built) is evaluated at another size on a copy built for that size,
carrying the checkpoint's weights with its position embeddings / relative-position tables
resampled by the source's checkpoint filter, as for fine-tuning at another resolution
(:func:`landscape.models.resolution.at_input_size`); the note names the resampled keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from landscape.data import DatasetBundle
from landscape.models.base import check_input_size
from landscape.models.resolution import at_input_size, shown
from landscape.stages.base import (
    RunContext, Stage, Unit, check_checkpoints, check_counts, register_stage,
)
from landscape.train import evaluate, make_loader


@dataclass
class ResolutionConfig:
    enabled: bool = False
    checkpoints: list[str] = field(default_factory=lambda: ["final"])  # init, final and/or best
    sizes: list[int] = field(default_factory=list)  # input sizes in pixels (square)
    # how each size is loaded: "direct" (plain resize) or "same" (the run's data.resize)
    resize: str = "direct"
    batch_size: int = 256


class Renormalised(Dataset):
    """``(x, y)`` of ``ds`` with ``x`` moved from the normalisation ``(mean, std)`` of its own
    bundle to ``(to_mean, to_std)``: the same pixels as the network's training data saw them."""

    def __init__(self, ds: Dataset, mean: Sequence[float], std: Sequence[float],
                 to_mean: Sequence[float], to_std: Sequence[float]) -> None:
        shape = (-1, 1, 1)
        self.ds = ds
        self.scale = (torch.tensor(std) / torch.tensor(to_std)).view(shape)
        self.shift = ((torch.tensor(mean) - torch.tensor(to_mean)) / torch.tensor(to_std)).view(shape)

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.ds[i]
        return x * self.scale + self.shift, y


def test_split_at(data: DatasetBundle, other: DatasetBundle) -> Dataset:
    """``other``'s test split in the normalisation of ``data`` (unchanged when they agree)."""
    if tuple(other.mean) == tuple(data.mean) and tuple(other.std) == tuple(data.std):
        return other.test
    return Renormalised(other.test, other.mean, other.std, data.mean, data.std)


EVAL_RESIZES = ("direct", "same")


def check_protocol_sizes(resize: str, sizes: Sequence[int]) -> None:
    """Raise naming the sizes at which the run's input protocol ``resize`` (its ``resize``
    column: ``"direct"``, ``"down_up:<n>"``, ``"canvas:<n>"``) cannot be applied: a
    ``down_up`` run needs sizes above its ``down_size``, a ``canvas`` run canvases at least as
    large as its pasted image."""
    kind, _, n = resize.partition(":")
    if kind == "down_up":
        bad, need = [s for s in sizes if s <= int(n)], f"> data.down_size={n}"
    elif kind == "canvas":
        bad, need = [s for s in sizes if s < int(n)], f">= the pasted image's {n} px"
    else:
        return
    if bad:
        raise ValueError(f"resolution.sizes {bad} cannot be loaded with this run's "
                         f"data.resize={kind} (resolution.resize=same): every size must be "
                         f"{need}; drop them, or set resolution.resize=direct to test on plain "
                         "resized images")


@register_stage
class ResolutionStage(Stage):
    name = "resolution"
    config_field = "resolution"

    def validate(self, config: ResolutionConfig) -> None:
        check_checkpoints("resolution", config.checkpoints)
        if config.resize not in EVAL_RESIZES:
            raise ValueError(f"resolution.resize must be one of {EVAL_RESIZES}, got "
                             f"{config.resize!r}")
        sizes = config.sizes
        if not config.enabled and not sizes:
            return  # off, with no sizes listed: nothing to check
        if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                            for s in sizes):
            raise ValueError("resolution.sizes must be a non-empty list of input sizes in "
                             f"pixels (integers >= 1), got {list(sizes)}")
        check_counts("resolution", config, ["batch_size"])

    def validate_for(self, config: ResolutionConfig, identity) -> None:
        if not config.enabled:
            return
        if config.resize == "same":
            check_protocol_sizes(identity.resize, config.sizes)
        with torch.device("meta"):
            model = identity.build_model()
        for s in config.sizes:
            try:
                check_input_size(at_input_size(model, s, builder(identity), identity.arch)[0], s)
            except ValueError as e:  # too small, or tables its source cannot resample
                raise ValueError(f"resolution.sizes: {identity.arch} cannot be evaluated at "
                                 f"{s} px: {e}") from None

    def units(self, config: ResolutionConfig) -> list[Unit]:
        return [Unit(f"resolution_{c}", {"checkpoint": c}) for c in config.checkpoints]

    def run(self, ctx: RunContext, config: ResolutionConfig, unit: Unit) -> list[dict]:
        checkpoint = unit.params["checkpoint"]
        model = ctx.load_model(checkpoint)
        data, same = ctx.data, config.resize == "same"
        rows = []
        for size in sorted(set(config.sizes)):
            other = ctx.data_at(size, same_protocol=same)
            test = other.test if other is data else test_split_at(data, other)
            loader = make_loader(test, config.batch_size, ctx.settings, shuffle=False,
                                 num_workers=ctx.num_workers)
            sized, resampled = at_input_size(model, size, builder(ctx.identity),
                                             ctx.identity.arch)
            loss, acc = evaluate(sized, loader, ctx.settings)
            note = (f"checkpoint={checkpoint}; eval_size={size}; "
                    f"eval_resize={ctx.identity.resize if same else 'direct'}; "
                    f"train_size={data.image_size}; "
                    f"n_test={len(test)}")  # type: ignore[arg-type]
            if resampled:
                note += (f"; resampled={shown(resampled, 2)} (the source's checkpoint "
                         "filter)")
            rows += [{"stage": unit.name, "metric": "resolution_test_acc", "value": acc,
                      "index": size, "note": note},
                     {"stage": unit.name, "metric": "resolution_test_loss", "value": loss,
                      "index": size, "note": note}]
        return rows


def builder(identity) -> Callable[[int], torch.nn.Module]:
    """size -> a new model of ``identity`` built for that input size, without its pretrained
    weights (the checkpoint's are carried over)."""
    return lambda size: dataclasses.replace(identity, image_size=size, weights=None).build_model()
