"""The per-position probe maps of every listed layer, relative to the network's accuracy
(issue 26 item 4)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.probe_plots import position_maps
from analysis.stats import with_cell

BASE = dict(arch="vgg19", dataset="digits", width=0.125, pool_kernel=0, pool_stride=1,
            pool_padding=0)


def _rows():
    rows = []
    for pool, rf in ((0, 40), (2, 80)):
        for seed, acc in ((0, 0.8), (1, 0.5)):
            run = f"vgg19-c{pool}/seed={seed}"
            b = dict(BASE, run_id=run, seed=seed, pool_level=pool, receptive_field=rf)
            rows += [dict(b, stage="train", metric="test_acc", value=v, index=e)
                     for e, v in ((1, 0.1), (2, acc))]
            for i, layer in enumerate(("features.3", "features.0")):  # listed out of order
                rows.append(dict(b, stage="probes_final", metric="probe_acc", layer=layer,
                                 index=1 - i, value=0.5))
                for y in range(2):
                    for x in range(3):
                        rows.append(dict(b, stage="probes_final", metric="position_probe_acc",
                                         layer=layer, coord_x=x, coord_y=y,
                                         value=0.1 * (x + 1) * (y + 1) * (i + 1) * acc))
    return with_cell(pd.DataFrame(rows))


def test_every_listed_layer_is_a_row_in_forward_order_and_values_are_relative():
    fig = position_maps(_rows())
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(images) == 4  # 2 layers x 2 receptive fields
    assert images[0].get_ylabel().startswith("features.0")
    assert images[2].get_ylabel().startswith("features.3")
    # each seed's map divided by its own accuracy: the seeds agree, so the mean is the map
    expected0 = np.array([[0.2 * (x + 1) * (y + 1) for x in range(3)] for y in range(2)])
    np.testing.assert_allclose(images[0].get_images()[0].get_array(), expected0)
    np.testing.assert_allclose(images[2].get_images()[0].get_array(), expected0 / 2)
    absolute = position_maps(_rows(), relative=False)
    a = [ax for ax in absolute.axes if ax.get_images()][0].get_images()[0].get_array()
    np.testing.assert_allclose(a, expected0 * (0.8 + 0.5) / 2)


def test_no_position_rows_draw_nothing():
    df = _rows()
    assert position_maps(df[df["metric"] != "position_probe_acc"]) is None
