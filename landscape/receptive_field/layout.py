"""Where the spatial axes of a feature map live among a tensor's dimensions.

A layout lists, per tensor dimension, its *atoms* from outer to inner; an atom is
``(axis, stride, size)``:

* ``("h", s, n)`` / ``("w", s, n)``: n positions of the image's H / W axis, ``s`` positions
  apart (a dimension holding a whole axis is ``(("h", 1, H),)``; reshaping H into
  ``(H // p, p)`` gives ``("h", p, H // p), ("h", 1, p)``);
* ``("*", p, n)``: n positions whose spatial origin is no longer separable (e.g. image tokens
  concatenated with a class token); p is the number of tokens before the image tokens plus
  one (0: unknown), and where known a fourth item holds the image tokens' own atoms
  (:func:`opaque`, :func:`image_atoms`);
* ``("c", 0, n)``: anything else (batch, channels, heads); size-1 ``"c"`` atoms are dropped.

``None`` sizes are unknown and filled from a tensor's shape by :func:`fit`. A conv or pool
needs the two spatial axes *intact* (one atom with stride 1, alone in its dimension) in the last
two dimensions; ``permute`` / ``view`` / ``reshape`` / ``flatten`` / indexing move atoms
around without changing the geometry of a position. All functions are pure; they raise
:class:`~landscape.receptive_field.geometry.Skip` when a layout cannot be followed.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from landscape.receptive_field.geometry import Skip

Atom = tuple[str, int, "int | None"]
Layout = tuple[tuple[Atom, ...], ...]
SPATIAL = ("h", "w", "*")


def canonical(ndim: int = 4) -> Layout:
    """(..., C, H, W): every dimension before the last two is non-spatial."""
    if ndim < 2:
        raise Skip(f"a feature map needs at least 2 dimensions, got {ndim}")
    return ((("c", 0, None),),) * (ndim - 2) + ((("h", 1, None),), (("w", 1, None),))


def is_spatial(dim: tuple[Atom, ...]) -> bool:
    return any(a[0] in SPATIAL for a in dim)


def spatial_dims(layout: Layout) -> set[int]:
    """Indices of dimensions holding any spatial position."""
    return {i for i, dim in enumerate(layout) if is_spatial(dim)}


def intact(layout: Layout) -> dict[str, int]:
    """``{axis: dim}`` for each axis held whole (one stride-1 atom, alone) by one dimension."""
    out = {}
    for axis in ("h", "w"):
        where = [(i, a) for i, dim in enumerate(layout) for a in dim if a[0] == axis]
        if len(where) == 1 and where[0][1][1] == 1 and len(layout[where[0][0]]) == 1:
            out[axis] = where[0][0]
    return out


def norm_dim(dim: int, ndim: int, where: str) -> int:
    if not -ndim <= int(dim) < ndim:
        raise Skip(f"{where} uses dimension {dim} of a {ndim}-d tensor")
    return int(dim) % ndim


def compact(dim: Sequence[Atom]) -> tuple[Atom, ...]:
    """Drop size-1 ``c`` atoms; merge neighbouring ``c`` atoms and contiguous same-axis atoms."""
    out: list[Atom] = []
    for atom in dim:
        if atom[0] == "c" and atom[2] == 1:
            continue
        if out:
            prev = out[-1]
            if prev[0] == atom[0] == "c" or prev[0] == atom[0] == "*":
                size = None if None in (prev[2], atom[2]) else prev[2] * atom[2]
                out[-1] = (atom[0], 0, size)
                continue
            if prev[0] == atom[0] and atom[2] is not None and prev[2] is not None and \
                    prev[1] == atom[1] * atom[2]:
                out[-1] = (atom[0], atom[1], prev[2] * atom[2])
                continue
        out.append(atom)
    return tuple(out)


def settle(layout: Layout) -> Layout:
    """``layout`` without the size-1 atoms of an axis that another dimension holds as map
    positions (an atom of size > 1 in a dimension without channels): they hold no position.
    A reshape splits ``H`` into ``(1, H)`` with such an atom, which is all that is left of
    the map's positions when what follows moves the inner atom into the channels (a 2x2
    patch merging of a 2x2 map); for any other op, e.g. a conv after ``unsqueeze`` or
    attention within one window of the whole map, it is dropped (:class:`Ctx` settles the
    inputs of every op but permutes and reshapes)."""
    if layout is None:
        return layout
    placed = {a[0] for dim in layout if not any(b[0] == "c" for b in dim)
              for a in dim if a[0] in ("h", "w") and a[2] != 1}
    if not placed:
        return layout
    out = tuple(tuple(a for a in dim if not (a[0] in placed and a[2] == 1)) for dim in layout)
    return out if out != layout else layout


def fit(layout: Layout, shape: Sequence[int] | None, where: str) -> Layout:
    """``layout`` with unknown sizes filled from ``shape``; a non-spatial size that changed
    (channels after a conv, a chunk) is refreshed; spatial sizes must match."""
    if shape is None:
        return layout
    if len(shape) != len(layout):
        raise Skip(f"{where}: lost track of the spatial axes (layout of {len(layout)} "
                   f"dimensions for a tensor of shape {tuple(shape)})")
    out = []
    for dim, n in zip(layout, shape):
        n = int(n)
        spatial = [a for a in dim if a[0] != "c"]
        s_known = all(a[2] is not None for a in spatial)
        s_prod = math.prod(a[2] for a in spatial if a[2] is not None)
        c = [i for i, a in enumerate(dim) if a[0] == "c"]
        if not spatial:
            dim = (("c", 0, n),) if n != 1 else ()
        elif s_known and len(c) <= 1:
            if n % s_prod or (not c and n != s_prod):
                raise Skip(f"{where}: lost track of the spatial axes (a dimension of size {n} "
                           f"holds {dim})")
            if c:
                dim = dim[:c[0]] + (("c", 0, n // s_prod),) + dim[c[0] + 1:]
        elif not c and len(spatial) - sum(a[2] is not None for a in spatial) == 1:
            if n % s_prod:
                raise Skip(f"{where}: lost track of the spatial axes (a dimension of size {n} "
                           f"holds {dim})")
            dim = tuple(a if a[2] is not None else sized(a, n // s_prod) for a in dim)
        out.append(compact(dim))
    return tuple(out)


def permute(layout: Layout, order: Sequence[int], where: str) -> Layout:
    ndim = len(layout)
    order = [norm_dim(d, ndim, where) for d in order]
    if sorted(order) != list(range(ndim)):
        raise Skip(f"{where} permutes with {tuple(order)}, not a permutation of {ndim} dims")
    return tuple(layout[d] for d in order)


def swap(layout: Layout, a: int, b: int, where: str) -> Layout:
    order = list(range(len(layout)))
    a, b = norm_dim(a, len(layout), where), norm_dim(b, len(layout), where)
    order[a], order[b] = order[b], order[a]
    return permute(layout, order, where)


def flatten(layout: Layout, start: int, end: int, where: str) -> Layout:
    """Merge dimensions ``start..end`` (no sizes needed)."""
    ndim = len(layout)
    if ndim == 0:
        return layout
    s, e = norm_dim(start, ndim, where), norm_dim(end, ndim, where)
    merged = compact([a for dim in layout[s:e + 1] for a in dim])
    return layout[:s] + (merged,) + layout[e + 1:]


def reshape(layout: Layout, shape_in: Sequence[int], shape_out: Sequence[int],
            where: str) -> Layout:
    """Layout after ``view`` / ``reshape`` from ``shape_in`` to ``shape_out`` (row-major)."""
    atoms = [a for dim in fit(layout, shape_in, where) for a in dim]
    out: list[tuple[Atom, ...]] = []
    sizes = [int(n) for n in shape_out]
    for i, n in enumerate(sizes):
        dim: list[Atom] = []
        need = n
        next_is_one = i + 1 < len(sizes) and sizes[i + 1] == 1
        if n == 1 and atoms and atoms[0][0] in ("h", "w") and (atoms[0][2] or 1) > 1:
            # a size-1 dimension before a spatial axis splits it (H -> (1, H)): it holds the
            # axis' outer size-1 atom, as H -> (H // p, p) holds the outer H // p positions;
            # what follows may move the inner atom away (a 2x2 patch merging of a 2x2 map)
            axis, stride, size = atoms[0]
            out.append(((axis, stride * size, 1),))
            continue
        while atoms:
            if need == 1 and (atoms[0][2] != 1 or (next_is_one and (n != 1 or dim))
                              or _continued(atoms)):
                # a satisfied dimension keeps the size-1 atoms after it unless size-1
                # dimensions follow: those take one each (a 1x1 map through a channel
                # shuffle keeps H and W in their own dimensions, not in the channels); nor
                # the outer size-1 atom of an axis whose next atom goes on (1 x 7 -> 7)
                break
            atom = atoms.pop(0)
            axis, stride, size = atom[:3]
            if size is None:
                raise Skip(f"{where} reshapes {tuple(shape_in)} to {tuple(shape_out)} where "
                           "the sizes of the merged dimensions cannot be told apart")
            if size <= need and need % size == 0:
                dim.append(atom)  # whole (a "*" atom keeps its image atoms)
                need //= size
            elif size % need == 0 and axis != "*":
                inner = size // need
                dim.append((axis, stride * inner if axis != "c" else 0, need))
                atoms.insert(0, (axis, stride, inner))
                need = 1
            else:
                raise Skip(f"{where} reshapes {tuple(shape_in)} to {tuple(shape_out)} across "
                           "a spatial axis in a way the RF analysis cannot follow")
        if need != 1:
            raise Skip(f"{where} reshapes {tuple(shape_in)} to {tuple(shape_out)}: sizes "
                       "do not match")
        out.append(compact(dim))
    if any(a[2] != 1 for a in atoms):
        raise Skip(f"{where} reshapes {tuple(shape_in)} to {tuple(shape_out)}: sizes do not match")
    if atoms and out:  # trailing size-1 spatial atoms stay with the last dimension
        out[-1] = compact(out[-1] + tuple(atoms))
    return tuple(out)


def _continued(atoms: Sequence[Atom]) -> bool:
    """The first atom is a size-1 spatial atom whose axis goes on in the next one."""
    return len(atoms) > 1 and atoms[0][0] in ("h", "w") and atoms[0][2] == 1 and \
        atoms[1][0] == atoms[0][0] and atoms[1][2] is not None and \
        atoms[0][1] == atoms[1][1] * atoms[1][2]


def insert(layout: Layout, dim: int) -> Layout:
    """A new size-1 dimension at ``dim`` (``unsqueeze``)."""
    d = dim % (len(layout) + 1)
    return layout[:d] + ((),) + layout[d:]


def remove(layout: Layout, dim: int, where: str) -> Layout:
    """Drop a non-spatial dimension (``squeeze`` of size 1, integer index, reduction)."""
    d = norm_dim(dim, len(layout), where)
    if is_spatial(layout[d]):
        raise Skip(f"{where} removes dimension {dim}, which holds spatial positions")
    return layout[:d] + layout[d + 1:]


def channel(layout: Layout, dim: int, where: str) -> Layout:
    """``layout`` with dimension ``dim`` replaced by a non-spatial one (e.g. a Linear's output)."""
    d = norm_dim(dim, len(layout), where)
    return layout[:d] + ((("c", 0, None),),) + layout[d + 1:]


def opaque(layout: Layout, dim: int, where: str, prefix: int | None = None,
           image: tuple[Atom, ...] | None = None) -> Layout:
    """Dimension ``dim`` keeps spatial positions that can no longer be told apart. ``prefix``:
    the number of tokens without positions before them (a class token), where known; the
    ``"*"`` atom holds it as its stride, plus one (0: unknown; :func:`token_prefix`), and
    ``image``, the atoms of the image tokens after them, as a fourth item (:func:`image_atoms`:
    slicing the prefix off gives them back)."""
    d = norm_dim(dim, len(layout), where)
    atom = ("*", 0 if prefix is None else prefix + 1, None)
    if prefix is not None and image is not None:
        atom += (tuple(image),)
    return layout[:d] + ((atom,),) + layout[d + 1:]


def sized(atom: Atom, size: int | None) -> Atom:
    """``atom`` with another size (a ``"*"`` atom keeps its image atoms)."""
    return atom[:2] + (size,) + tuple(atom[3:])


def token_prefix(dim: tuple[Atom, ...]) -> int | None:
    """For a dimension of tokens (one ``"*"`` atom): how many tokens without positions
    (class, register tokens) come before the image tokens, where known; else None."""
    if len(dim) != 1 or dim[0][0] != "*" or dim[0][1] < 1:
        return None
    return dim[0][1] - 1


def image_atoms(dim: tuple[Atom, ...]) -> tuple[Atom, ...] | None:
    """For a dimension of prefix tokens then image tokens (:func:`opaque`): the image tokens'
    atoms, where known."""
    if token_prefix(dim) is None or len(dim[0]) < 4:
        return None
    return dim[0][3]


def mixed(layout: Layout, dims: set[int], where: str) -> dict[str, int | None]:
    """How an op that mixes every position held by the dimensions ``dims`` (a Linear or a
    sum over them, a reduction, a softmax) mixes each image axis: ``{axis: w}`` where they
    hold the innermost atoms of the axis (smallest strides, w positions in all) and its
    other atoms lie elsewhere, so that each position is mixed with the w positions of its
    block (non-overlapping windows of w); ``{axis: None}`` where they hold its outermost
    atom (the positions mixed span the whole axis: all of it, or strided across it). An
    axis without atoms of size > 1 in ``dims`` is left out; so is a ``"*"`` atom's, which
    is reported as ``{"*": None}``. Any other split of an axis is refused."""
    out: dict[str, int | None] = {}
    for axis in ("h", "w", "*"):
        atoms = sorted(((a[1], d in dims, a) for d, dim in enumerate(layout) for a in dim
                        if a[0] == axis), key=lambda t: -t[0])
        # size-1 atoms hold no positions, but an outermost one is the position of a map of
        # one (a 2 x 2 map reshaped as (1, 2)): mixing the 2 is a block, not the whole axis
        atoms = [t for i, t in enumerate(atoms) if t[2][2] != 1 or i == 0]
        inside = [a for _, m, a in atoms if m]
        if not any(a[2] != 1 for a in inside):
            continue
        if axis == "*" or atoms[0][1]:
            out[axis] = None
            continue
        k = len(atoms) - len(inside)
        if not all(m for _, m, _ in atoms[k:]) or None in [a[2] for a in inside] or \
                atoms[-1][2][1] != 1 or atoms[k - 1][2][1] != math.prod(a[2] for a in inside):
            raise Skip(f"{where} mixes the positions {tuple(inside)} of {axis.upper()}, "
                       f"which lies in {tuple(a for _, _, a in atoms)}: not the inner positions "
                       "of blocks, nor the whole axis")
        out[axis] = math.prod(a[2] for a in inside)
    return out


def space_to_depth(layout: Layout, r: tuple[int, int], sizes: Sequence[int | None]
                   ) -> Layout | None:
    """``(..., C, H, W) -> (..., C r0 r1, H / r0, W / r1)`` with H and W whole in the last two
    dimensions: each r0 x r1 block's offsets move into the channels, after them (channel
    major, as ``pixel_unshuffle`` and ``unfold`` order them), the block index stays. Nothing
    is mixed: a conv or Linear over those channels reads the blocks (:func:`mixed`). None
    where a size is unknown or not a multiple of r, or the axes are not whole there."""
    n = len(layout)
    whole = {d: a for a, d in intact(layout).items()}
    if n < 3 or n - 2 not in whole or n - 1 not in whole or is_spatial(layout[n - 3]) or \
            any(m is None or m % k for m, k in zip(sizes, r)):
        return None
    a, b = whole[n - 2], whole[n - 1]
    channels = compact(layout[n - 3] + ((a, 1, r[0]), (b, 1, r[1])))
    return layout[:n - 3] + (channels, ((a, r[0], sizes[0] // r[0]),),
                             ((b, r[1], sizes[1] // r[1]),))


def depth_to_space(layout: Layout, r: int) -> Layout | None:
    """The inverse of :func:`space_to_depth` by r: where the channels end with the offsets
    of the r x r blocks whose index the last two dimensions hold, the map is whole again;
    None for any other layout (channels that hold no positions)."""
    n = len(layout)
    if n < 3 or len(layout[n - 3]) < 2 or len(layout[n - 2]) != 1 or len(layout[n - 1]) != 1:
        return None
    (a, sa, na), (b, sb, nb) = layout[n - 2][0][:3], layout[n - 1][0][:3]
    if layout[n - 3][-2:] != ((a, 1, r), (b, 1, r)) or (sa, sb) != (r, r) or None in (na, nb):
        return None
    return layout[:n - 3] + (layout[n - 3][:-2], ((a, 1, na * r),), ((b, 1, nb * r),))


def pool_atoms(layout: Layout, s: dict[str, int], where: str) -> Layout:
    """``layout`` after pooling cells of ``s[axis]`` consecutive positions along each axis
    (kernel = stride = s): the innermost atoms of the axis, s positions in all, leave (an
    atom holding more is split), and the strides of the others count pooled positions."""
    out = [list(dim) for dim in layout]
    for axis, n in s.items():
        left = n
        for stride, d, i in sorted((a[1], d, i) for d, dim in enumerate(layout)
                                   for i, a in enumerate(dim) if a[0] == axis):
            size = layout[d][i][2]
            if size == 1:  # no positions: dropped inside the cells, else rescaled
                out[d][i] = (axis, stride // n, 1) if stride % n == 0 else None
            elif left == 1:
                if stride % n:
                    raise Skip(f"{where} pools cells of {n} along {axis.upper()}, whose "
                               f"positions lie in {layout}: not the inner ones of an atom")
                out[d][i] = (axis, stride // n, size)
            elif size is None or stride * left != n or (size % left and left % size):
                raise Skip(f"{where} pools cells of {n} along {axis.upper()}, whose positions "
                           f"lie in {layout}: the cells are not whole atoms")
            elif size <= left:
                out[d][i] = None  # inside the cell
                left //= size
            else:
                out[d][i] = (axis, 1, size // left)  # split: its inner part is the cell
                left = 1
        if left != 1:
            raise Skip(f"{where} pools cells of {n} along {axis.upper()}, which holds fewer "
                       "positions")
    return tuple(tuple(a for a in dim if a is not None) for dim in out)


def same(a: Layout, b: Layout) -> bool:
    """Equal up to unknown sizes of non-spatial atoms (a dimension without spatial atoms
    equals any other such)."""
    if len(a) != len(b):
        return False
    for da, db in zip(a, b):
        sa = [x for x in da if x[0] != "c"]
        sb = [x for x in db if x[0] != "c"]
        if len(sa) != len(sb) or any(_key(x) != _key(y) or None not in (x[2], y[2]) and
                                     x[2] != y[2] for x, y in zip(sa, sb)):
            return False
        if not sa:  # non-spatial in both: a size-1 batch (no atoms) is one of unknown size
            continue
        if [x[0] for x in da] != [x[0] for x in db]:
            return False
    return True


def _key(atom: Atom) -> tuple:
    """What must agree between two layouts: axis and stride; for a ``"*"`` atom only the
    kind (its stride holds the count of leading tokens, which may be known on one side)."""
    return (atom[0],) if atom[0] == "*" else atom[:2]


def broadcast(layouts: list[Layout], ndim: int | None, where: str) -> Layout:
    """Layout of an elementwise result of feature maps with these layouts (the leading
    tokens of a ``"*"`` dimension stay known where every input knows the same count)."""
    ndim = ndim if ndim is not None else max(len(x) for x in layouts)
    padded = [((),) * (ndim - len(x)) + x for x in layouts]
    first = padded[0]
    for other in padded[1:]:
        if not same(first, other):
            raise Skip(f"{where} combines feature maps whose spatial axes lie in different "
                       "dimensions")
    return tuple(
        tuple(("*", 0, a[2]) if a[0] == "*" and len({token_prefix(x[d]) for x in padded}) > 1
              else a for a in dim) if len(dim) == 1 else dim
        for d, dim in enumerate(first))


_GATHER = object()


def _gather(item: Any) -> bool:
    """A 1-d integer tensor or a list of ints (not bools)."""
    if isinstance(item, torch.Tensor):
        return item.dim() == 1 and not item.is_floating_point() and item.dtype != torch.bool
    return isinstance(item, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                          for i in item)


def index_ops(index: Any, ndim: int, where: str) -> list[tuple[str, Any]]:
    """Normalise a tensor index into one ``(op, arg)`` per input dimension or inserted axis:
    ``("keep", slice)``, ``("take", int)``, ``("gather", None)`` (one 1-d integer tensor or
    list among slices: a selection along that dimension, kept in place) or ``("new", None)``."""
    items = list(index) if isinstance(index, tuple) else [index]
    gathers = [i for i, item in enumerate(items) if _gather(item)]
    if len(gathers) == 1 and not any(isinstance(i, int) for i in items):
        items[gathers[0]] = _GATHER
    if any(not isinstance(i, (slice, int, type(None), type(Ellipsis))) or isinstance(i, bool)
           for i in items if i is not _GATHER):
        raise Skip(f"{where} indexes with a tensor or list (advanced indexing) other than one "
                   "1-d integer index among slices")
    used = sum(1 for i in items if isinstance(i, (slice, int)) or i is _GATHER)
    if used > ndim:
        raise Skip(f"{where} indexes {used} dimensions of a {ndim}-d tensor")
    ops: list[tuple[str, Any]] = []
    for i in items:
        if i is Ellipsis:
            ops += [("keep", slice(None))] * (ndim - used)
            used = ndim
        elif i is None:
            ops.append(("new", None))
        elif i is _GATHER:
            ops.append(("gather", None))
        else:
            ops.append(("keep", i) if isinstance(i, slice) else ("take", i))
    n_dims = sum(1 for op, _ in ops if op != "new")
    return ops + [("keep", slice(None))] * (ndim - n_dims)
