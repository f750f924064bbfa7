"""Probes stage: per-layer linear probes and saturation of a trained network, and where its
tail of unproductive layers starts, observed and predicted (Richter et al., "Size Matters" and
"Receptive Field Refinement"); :mod:`landscape.probes`.

Unit ``probes_<checkpoint>``. One forward pass per batch feeds every selected layer's probe
features (its output adaptive-average-pooled to ``pool_size`` x ``pool_size``, or a smaller
map's own size unless ``pool_up``, flattened; a
transformer's (N, L, D) tokens averaged over L, each token one covariance sample) and,
on the test images, its streamed float64 output covariance (each position of a conv map one
sample, the channels the dimensions). Probes: L2 logistic regression (L-BFGS, ``C``; backend
``torch`` on the run's device, or ``sklearn``: one objective, :mod:`landscape.probes.probes`)
on standardised features of the first ``n_train`` training images (no augmentation), scored on
the first ``n_test`` test images; the note of every row names the backend, and a unit written
by the other backend (or before ``backend`` existed: scikit-learn) is recomputed, not mixed.
Saturation = intrinsic dimension / width, the intrinsic dimension the number of
eigendirections explaining ``threshold`` of the variance (``saturation_rule=smallest``, the
papers' definition; ``delve`` = delve 0.1.50's count, one fewer). A layer whose test images
give it no more samples than channels has a rank-deficient covariance (a saturation biased
low): it gets no saturation rows, the note names it, and there is no observed tail when it is
one of the body layers; submitting warns about it first.

Rows (``layer`` = module, ``index`` = its position among the probed layers in forward order):
``probe_acc``, ``probe_train_acc``, ``saturation``, ``intrinsic_dim``; ``tail_observed``
(value = index of the first layer of the observed tail among the layers before a Linear head:
probe accuracy improves by less than ``epsilon`` after it and saturation stays below those
layers' mean from it on), only when there is one; with ``position_layers``,
``position_probe_acc`` per position (``coord_x`` = column, ``coord_y`` = row) of one probe per
feature-map position. Stopped on the way, a unit goes on from the layers it had fitted
(``checkpoints/probes/<unit>/``, :func:`landscape.stages.scratch.unit_progress`).

Unit ``probes_border`` (one per run, from the architecture alone): ``border_predicted``, value
= index of the first probed layer whose input's minimum receptive field covers the image,
only when there is one. It records the RF analysis's version: a change to the analysis
recomputes this unit, not the probes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from landscape import results
from landscape.activations import ActivationCapture, select_modules, split_call
from landscape.identity import RunIdentity
from landscape.probes import (
    DEFAULT_BACKEND, DEFAULT_RULE, RULES, accumulator_saturation, check_backend, collect_layers,
    layer_probes, observed_tail, position_probe_map, predicted_border, samples_of,
)
from landscape.receptive_field import version
from landscape.stages.base import (
    RunContext, Stage, Unit, check_checkpoints, check_counts, check_number, register_stage,
)
from landscape.stages.batches import evaluation_batches, test_batches
from landscape.stages.scratch import unit_progress

log = logging.getLogger("landscape")
BORDER_UNIT = "probes_border"  # the predicted border's own unit (it depends on the RF analysis)
_warned: set[tuple] = set()  # (arch, input size, n_test, layers) already warned about
_CHANNELS_FIRST_1D = (torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.BatchNorm1d,
                      torch.nn.InstanceNorm1d, torch.nn.MaxPool1d, torch.nn.AvgPool1d,
                      torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveMaxPool1d)


@dataclass
class ProbesConfig:
    enabled: bool = False
    checkpoints: list[str] = field(default_factory=lambda: ["final"])  # init, final and/or best
    layers: Optional[list[str]] = None  # glob patterns on module names; None: Conv2d + Linear
    n_train: int = 5000  # the first n training images (no augmentation) fit the probes
    n_test: int = 1000  # the first n test images score them and give the covariances
    batch_size: int = 250
    pool_size: int = 4  # conv outputs adaptive-average-pooled to pool_size x pool_size
    # a map smaller than pool_size keeps its size (pool_up=True repeats its positions up to
    # pool_size, which weakens the probe's L2 penalty: the features before 2026-12-06)
    pool_up: bool = False
    C: float = 1.0  # inverse L2 regularisation of the logistic regression
    max_iter: int = 1000  # lbfgs iterations
    backend: str = DEFAULT_BACKEND  # torch (float32, on the run's device) | sklearn (CPU)
    threshold: float = 0.99  # explained-variance fraction of the intrinsic dimension
    saturation_rule: str = DEFAULT_RULE  # smallest (the papers) | delve (delve 0.1.50)
    epsilon: float = 0.01  # accuracy gain below which a layer counts as unproductive
    min_tail: int = 2  # layers an observed tail must have
    # exact conv names, or conv:<k> (the k-th Conv2d, 0-based, registration order): heat maps
    position_layers: list[str] = field(default_factory=list)
    position_pool: Optional[int] = None  # pool those maps first (None: full resolution)


def validate(cfg: ProbesConfig) -> None:
    check_checkpoints("probes", cfg.checkpoints)
    check_counts("probes", cfg, ["n_train", "n_test", "batch_size", "pool_size", "max_iter",
                                 "min_tail"])
    check_counts("probes", cfg, ["n_test"], minimum=2)
    check_number("probes.C", cfg.C, above=0)
    check_backend(cfg.backend, "probes.backend")
    if not isinstance(cfg.pool_up, bool):
        raise ValueError(f"probes.pool_up must be true or false, got {cfg.pool_up!r}")
    check_number("probes.epsilon", cfg.epsilon, above=0, strict=False)
    if not 0 < cfg.threshold < 1:
        raise ValueError(f"probes.threshold must be in (0, 1), got {cfg.threshold}")
    if cfg.saturation_rule not in RULES:
        raise ValueError(f"probes.saturation_rule must be one of {RULES}, got "
                         f"{cfg.saturation_rule!r}")
    if cfg.position_pool is not None and cfg.position_pool < 1:
        raise ValueError(f"probes.position_pool must be >= 1 or null, got {cfg.position_pool}")


def position_layer_names(model: torch.nn.Module, entries: list[str], arch: str) -> list[str]:
    """``probes.position_layers`` as conv module names: an exact name, or ``conv:<k>`` for the
    k-th ``Conv2d`` of the model (0-based, registration order), so one setting fits every
    architecture of a sweep. A one-line error names what matches nothing."""
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    out, wrong = [], []
    for e in entries:
        kind, _, k = str(e).partition(":")
        name = (convs[int(k)] if kind == "conv" and k.isdigit() and int(k) < len(convs)
                else e if e in convs else None)
        (wrong if name is None else out).append(e if name is None else name)
    if wrong:
        shown = ", ".join(convs[:8]) + (", ..." if len(convs) > 8 else "")
        raise ValueError(f"probes.position_layers: {wrong} are not conv layers of {arch} "
                         f"(conv:<k> for k < {len(convs)}, or a name: {shown})")
    return list(dict.fromkeys(out))


@register_stage
class ProbesStage(Stage):
    name = "probes"
    reads_layouts = True
    config_field = "probes"

    def validate(self, config: ProbesConfig) -> None:
        validate(config)

    def validate_for(self, config: ProbesConfig, identity: RunIdentity) -> None:
        with torch.device("meta"):
            model = identity.build_model()
        model.eval()  # BatchNorm in train mode refuses a batch of one 1x1 map
        x = identity.meta_batch(2)
        try:
            names = select_modules(model, config.layers, arg="probes.layers", example=x)
        except (TypeError, ValueError) as e:
            raise ValueError(str(e)) from None
        self._check_samples(model, names, x, config, identity)
        position_layer_names(model, config.position_layers, identity.arch)

    @staticmethod
    def _check_samples(model: torch.nn.Module, names: list[str], x: torch.Tensor,
                       config: ProbesConfig, identity: RunIdentity) -> None:
        """Warn (once per architecture and setting) about the layers whose covariance gets no
        more samples (test images x positions) than they have channels: their saturation will
        not be computed. Checked from the output shapes of a forward on the meta device."""
        shapes: dict[str, tuple] = {}
        with ActivationCapture(model, names, lambda n, out: shapes.update({n: out.shape})) as c:
            c.run(x)
        short = {}
        for name in names:
            shape = tuple(shapes[name])
            if len(shape) not in (2, 3, 4):
                raise ValueError(f"probes.layers: {name!r} gives outputs of shape {shape} "
                                 f"(batch of 2); probes and saturation need (N, D), (N, L, D) "
                                 f"tokens or (N, C, H, W) outputs: leave it out of "
                                 f"probes.layers (glob patterns on module names)")
            module = model.get_submodule(split_call(name)[0])
            if len(shape) == 3 and isinstance(module, _CHANNELS_FIRST_1D):
                raise ValueError(f"probes.layers: {name!r} is a {type(module).__name__}, whose "
                                 f"3-d outputs are (N, C, L); probes read 3-d outputs as "
                                 f"(N, L, D) tokens (features last): leave it out of "
                                 f"probes.layers")
            rows, channels = samples_of(torch.empty(shape, device="meta")).shape
            positions = rows // shape[0]  # covariance samples per image
            if config.n_test * positions <= channels:
                short[name] = channels // positions + 1  # the fewest images that suffice
        key = (identity.arch, identity.image_size, config.n_test, tuple(short))
        if short and key not in _warned:
            _warned.add(key)
            log.warning("probes.n_test=%d gives %d probed layer(s) of %s no more samples than "
                        "channels (%s): their saturation is not computed (probes are); "
                        "probes.n_test >= %d computes it for every layer", config.n_test,
                        len(short), identity.arch, ", ".join(list(short)[:4])
                        + (", ..." if len(short) > 4 else ""), max(short.values()))

    def units(self, config: ProbesConfig) -> list[Unit]:
        return [*(Unit(f"probes_{c}", {"checkpoint": c}) for c in config.checkpoints),
                Unit(BORDER_UNIT)]

    def settings(self, config: ProbesConfig) -> dict:
        return {**super().settings(config), "border_rows": BORDER_UNIT, "layer_order": "forward"}

    def unit_settings(self, config: ProbesConfig, unit: str) -> dict:
        """The border unit depends on the probed layers and the RF analysis alone: a change
        to the analysis recomputes it (well under a second), not the probes."""
        if unit == BORDER_UNIT:
            return results.jsonable({"layers": config.layers,
                                     "analysis": version.analysis_version()})
        return super().unit_settings(config, unit)

    def legacy_settings(self, config: ProbesConfig) -> dict:
        """A unit recorded before ``backend`` existed was fitted by scikit-learn, one recorded
        before ``pool_up`` existed pooled small maps up, and one recorded before the border
        had its unit holds a border row of the RF analysis of its day, and its layers in
        registration order (``index`` and the observed tail: a shortcut's conv before its
        block's convs): with the defaults it is recomputed, not kept."""
        return {**super().legacy_settings(config), "backend": "sklearn", "pool_up": True,
                "border_rows": "each probes unit", "layer_order": "registration"}

    def run(self, ctx: RunContext, config: ProbesConfig, unit: Unit) -> list[dict]:
        if unit.name == BORDER_UNIT:
            return _border_rows(ctx, config)
        c, device = config, ctx.settings.device
        model = ctx.load_model(unit.params["checkpoint"])
        train = evaluation_batches(ctx, c.n_train, c.batch_size)
        test = test_batches(ctx, c.n_test, c.batch_size)
        kw = dict(layers=c.layers, size=c.pool_size, pool_up=c.pool_up, device=device)
        fit = collect_layers(model, train, **kw)
        score = collect_layers(model, test, covariance=True, **kw)
        names = score.layers
        with unit_progress(ctx, self, unit.name, c, model) as journal:  # layer by layer
            probes = layer_probes(fit.features, fit.labels, score.features, score.labels,
                                  C=c.C, max_iter=c.max_iter, backend=c.backend, device=device,
                                  journal=journal)
        rows: list[dict] = []
        accuracy, saturation, unsaturated, constant = [], [], [], []
        for i, name in enumerate(names):
            probe, acc = probes[name], score.covariances[name]
            accuracy.append(probe.accuracy)
            rows += [{"metric": m, "value": v, "layer": name, "index": i}
                     for m, v in (("probe_acc", probe.accuracy),
                                  ("probe_train_acc", probe.train_accuracy))]
            if not acc.full_rank:  # a rank-deficient covariance: saturation biased low
                saturation.append(None)
                unsaturated.append(f"{name} ({acc.count} samples, {acc.dim} channels)")
                continue
            if not acc.total_variance > 0:  # the same output for every image: no
                saturation.append(None)  # spectrum (a positional encoding's conv), no tail
                constant.append(name)
                continue
            sat = accumulator_saturation(acc, c.threshold, rule=c.saturation_rule)
            saturation.append(sat.saturation)
            rows += [{"metric": m, "value": v, "layer": name, "index": i}
                     for m, v in (("saturation", sat.saturation),
                                  ("intrinsic_dim", sat.intrinsic_dim))]
        # The tail is sought among the layers before the head: a Linear classifier's output is
        # only num_classes wide, so its saturation says nothing about unused capacity.
        modules = dict(model.named_modules())
        body = [i for i, n in enumerate(names) if n not in constant
                and not isinstance(modules[split_call(n)[0]], torch.nn.Linear)]
        if any(saturation[i] is None for i in body):
            log.warning("%s: no observed tail: the saturation of %s is not computed (no more "
                        "test samples than channels; raise probes.n_test)", ctx.identity.run_id,
                        ", ".join(names[i] for i in body if saturation[i] is None))
        elif len(body) >= c.min_tail:
            tail = observed_tail([names[i] for i in body], [accuracy[i] for i in body],
                                 [saturation[i] for i in body], epsilon=c.epsilon,
                                 min_length=c.min_tail)
            if tail.start is not None:
                rows.append({"metric": "tail_observed", "value": names.index(tail.layer),
                             "layer": tail.layer})
        for layer in position_layer_names(model, c.position_layers, ctx.identity.arch):
            heat = position_probe_map(model, train, test, layer, size=c.position_pool,
                                      pool_up=c.pool_up, C=c.C, max_iter=c.max_iter,
                                      backend=c.backend, device=device)
            rows += [{"metric": "position_probe_acc", "value": float(heat.accuracy[y, x]),
                      "layer": layer, "coord_x": float(x), "coord_y": float(y)}
                     for y in range(heat.accuracy.shape[0])
                     for x in range(heat.accuracy.shape[1])]
        note = (f"checkpoint={unit.params['checkpoint']}; n_train={len(fit.labels)} "
                f"(training images, no augmentation); n_test={len(score.labels)}; "
                f"pool_size={c.pool_size}; pool_up={c.pool_up}; C={c.C}; backend={c.backend}; "
                f"threshold={c.threshold}; "
                f"saturation_rule={c.saturation_rule}; epsilon={c.epsilon}; "
                f"min_tail={c.min_tail}; input_size={ctx.identity.image_size}"
                + (f"; no saturation (no more test samples than channels): "
                   f"{', '.join(unsaturated)}" if unsaturated else "")
                + (f"; no saturation, out of the tail search (the same output for every "
                   f"test image): {', '.join(constant)}" if constant else ""))
        return [{"stage": unit.name, "note": note, **r} for r in rows]


def _border_rows(ctx: RunContext, c: ProbesConfig) -> list[dict]:
    """Unit ``probes_border``: the predicted border among the probed layers (as the probes
    select them: forward order, call sites resolved on a batch of two), from the
    freshly built model at the run's input size; no row when there is none."""
    model = ctx.build_model().eval()
    size, run_id = ctx.identity.image_size, ctx.identity.run_id
    example = torch.zeros(2, ctx.identity.in_channels, size, size)
    names = select_modules(model, c.layers, arg="probes.layers", example=example)
    note = f"input_size={size}; layers={c.layers}; {version.version_note()}"
    try:
        border = predicted_border(model, size, names)
    except ValueError as e:  # probed layers outside the RF table (e.g. ReLU outputs)
        log.warning("%s: no predicted border layer: %s", run_id, e)
        return []
    if border.index is None:
        return []
    return [{"stage": BORDER_UNIT, "metric": "border_predicted",
             "value": names.index(border.layer), "layer": border.layer, "note": note}]
