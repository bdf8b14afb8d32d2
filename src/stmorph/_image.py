"""Lazily read 2-D planes of stain images and cell segmentations.

Every image that stmorph uses is one 2-D plane ``(rows, columns)`` on the sample's pixel grid. The files it comes
from are many: plain and multi-page TIFF, OME-TIFF (multi-channel, multi-file, pyramidal: level 0 is used),
ImageJ hyperstacks, JPEG/PNG (RGB composites: one channel per colour), zarr arrays and OME-Zarr images. This
module turns any of them into a :class:`StainImage` that reads its plane on first use, memory-mapped where the
file allows it, reading only that plane's pages otherwise (never the whole stack).

A file's axes are named as tifffile names them: ``Y``/``X`` the plane, ``C`` or ``S`` (RGB samples) channels,
``Z`` focal planes; other axes (``T``, ``Q``, ``I``) must have one element, or, for an unnamed stack axis
(``Q``/``I``), are indexed by ``z`` (else ``channel``) as a plain 3-D stack always was.

Segmentations are :class:`LabelImage` (a raster of cell labels, 0 = background; CosMx ``CellLabels``, Xenium
masks, any label TIFF) or :class:`PolygonSegmentation` (cell polygons in pixels; MERSCOPE and Xenium boundaries)
which rasterises only the window it is asked for, so a whole-slide grid is never allocated for a crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely

from .errors import StmorphInputError

__all__ = [
    "StainImage",
    "LabelImage",
    "PolygonSegmentation",
    "image_axes",
    "image_channel_names",
    "open_channels",
    "labels_at",
    "IMAGE_SUFFIXES",
]

#: File suffixes read as images (zarr: a folder).
IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".jpg", ".jpeg", ".png", ".zarr")
_RASTER = (".jpg", ".jpeg", ".png", ".bmp")
_RGB_NAMES = ("R", "G", "B", "A")


# ---------------------------------------------------------------------------------------------------------------
# file-level helpers
# ---------------------------------------------------------------------------------------------------------------
def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir() or name.endswith((".zarr", ".zarr.zip", ".ome.zarr")):
        return "zarr"
    if name.endswith(_RASTER):
        return "raster"
    return "tiff"


def _unreadable(path: Path, exc: Exception) -> StmorphInputError:
    return StmorphInputError(
        f"cannot read the image ({type(exc).__name__}: {exc})", file=path,
        expected="a readable TIFF/OME-TIFF, JPEG/PNG or zarr image",
    )


def _zarr_open(path: Path) -> Any:
    """Open a zarr store read-only: a folder, or a zipped store (``*.zip``, e.g. Xenium ``cells.zarr.zip``)."""
    import zarr

    if path.name.lower().endswith(".zip"):
        return zarr.open(zarr.storage.ZipStore(str(path), mode="r"), mode="r")
    return zarr.open(str(path), mode="r")


def _open_zarr_array(path: Path, component: str | None = None) -> tuple[Any, str]:
    """The level-0 array of a zarr store and its axes (OME-Zarr ``multiscales`` axes when present).

    ``component`` is the path of an array or image group inside the store (e.g. ``"masks/1"``).
    """
    try:
        node = _zarr_open(path)
        if component:
            node = node[component]
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    if hasattr(node, "shape"):  # a plain array
        arr = node
        axes = {2: "YX", 3: "QYX", 4: "ZCYX"}.get(arr.ndim)
    else:
        attrs = dict(node.attrs)
        ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if ms:
            ds = ms[0]["datasets"][0]["path"]
            arr = node[ds]
            ax = ms[0].get("axes")
            if ax:
                axes = "".join((a["name"] if isinstance(a, dict) else str(a))[0].upper() for a in ax)
            else:
                axes = "TCZYX"[-arr.ndim:]
        else:
            keys = sorted(k for k, v in node.arrays()) if hasattr(node, "arrays") else []
            if not keys:
                raise StmorphInputError("the zarr group holds no array", file=path, expected="an OME-Zarr image or an array")
            arr = node[keys[0]]
            axes = {2: "YX", 3: "QYX", 4: "ZCYX"}.get(arr.ndim)
    if axes is None or len(axes) != arr.ndim:
        raise StmorphInputError(f"unsupported zarr image shape {arr.shape}", file=path, expected="2-D to 5-D image")
    return arr, axes


def image_axes(path: str | PathLike, component: str | None = None) -> tuple[str, tuple[int, ...]]:
    """The axes (tifffile letters, e.g. ``"CYX"``, ``"YXS"``) and shape of an image file's level 0, no pixels read.

    Parameters
    ----------
    path
        TIFF/OME-TIFF, JPEG/PNG or zarr image.
    component
        For a zarr store: the array or image group inside it (e.g. ``"masks/1"``).

    Returns
    -------
    (axes, shape)

    Examples
    --------
    >>> image_axes("morphology_focus_0000.ome.tif")  # doctest: +SKIP
    ('YX', (25778, 35416))
    """
    path = Path(path)
    if not path.exists():
        raise StmorphInputError("image not found", file=path, expected="an existing image file")
    kind = _kind(path)
    try:
        if kind == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tf:
                lvl = tf.series[0].levels[0]
                return str(lvl.axes), tuple(int(s) for s in lvl.shape)
        if kind == "raster":
            from PIL import Image

            with Image.open(path) as im:
                bands = len(im.getbands())
                shape = (im.height, im.width) + ((bands,) if bands > 1 else ())
                return ("YXS" if bands > 1 else "YX"), shape
    except StmorphInputError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    arr, axes = _open_zarr_array(path, component)
    return axes, tuple(int(s) for s in arr.shape)


def image_channel_names(path: str | PathLike) -> list[str] | None:
    """Channel names stored in an image file (OME-XML ``Channel/@Name``, ImageJ ``Labels``, OME-Zarr ``omero``
    channel labels; ``R, G, B`` for RGB composites), or ``None`` when the file names none.

    Parameters
    ----------
    path
        The image file.

    Returns
    -------
    list of str or None

    Examples
    --------
    >>> image_channel_names("Morphology2D/20210706_FOV001.TIF")  # doctest: +SKIP
    ['B', 'G', 'Y', 'R', 'U']
    """
    path = Path(path)
    axes, shape = image_axes(path)
    n = _channel_count(axes, shape)
    if "S" in axes and "C" not in axes and shape[axes.index("S")] in (3, 4):
        return list(_RGB_NAMES[: shape[axes.index("S")]])
    kind = _kind(path)
    names: list[str] | None = None
    if kind == "tiff":
        import tifffile

        with tifffile.TiffFile(path) as tf:
            if tf.ome_metadata:
                try:
                    ome = tifffile.xml2dict(tf.ome_metadata)["OME"]
                    img = ome["Image"][0] if isinstance(ome["Image"], list) else ome["Image"]
                    ch = img["Pixels"].get("Channel", [])
                    ch = ch if isinstance(ch, list) else [ch]
                    names = [str(c.get("Name", "")) for c in ch]
                except (KeyError, TypeError, IndexError):
                    names = None
            elif tf.imagej_metadata and tf.imagej_metadata.get("Labels"):
                names = [str(v) for v in tf.imagej_metadata["Labels"]]
    elif kind == "zarr":
        node = _zarr_open(path)
        attrs = dict(node.attrs)
        omero = attrs.get("omero") or attrs.get("ome", {}).get("omero")
        if omero and omero.get("channels"):
            names = [str(c.get("label", "")) for c in omero["channels"]]
    if names is None or len(names) != n or any(not v for v in names):
        return None
    return names


def _channel_count(axes: str, shape: Sequence[int]) -> int:
    for a in ("C", "S", "Q", "I"):
        if a in axes:
            return int(shape[axes.index(a)])
    return 1


def _plane_index(axes: str, shape: Sequence[int], z: int | None, channel: int | None, path: Path | None) -> tuple:
    """The index picking the ``(Y, X)`` plane at ``z`` / ``channel`` out of an array of ``axes``/``shape``."""
    index: list[Any] = []
    for pos, (a, n) in enumerate(zip(axes, shape)):
        if a in "YX":
            index.append(slice(None))
            continue
        if a == "S" and pos < len(axes) - 1:
            a = "Q"  # planar samples: tifffile's guess for any 3-plane stack written without metadata
        if a in "CS":
            want, what = channel, "channel"
        elif a == "Z":
            want, what = z, "z"
        elif a in "QI":  # an unnamed stack axis: z-planes of old stacks, or channels
            want, what = (z, "z") if z is not None or channel is None else (channel, "channel")
        else:
            want, what = None, f"axis {a}"
        if want is None:
            if n == 1:
                index.append(0)
                continue
            raise StmorphInputError(
                f"the image has {n} planes along its {a} axis (axes {axes}, shape {tuple(shape)}); choose one "
                f"with {what}=" + (" (or channel=)" if a in "QI" else ""), file=path, expected=f"a {what} index",
            )
        if not 0 <= int(want) < n:
            raise StmorphInputError(
                f"{what}={want} is out of range for {n} planes along axis {a}", file=path, expected=f"0 <= {what} < {n}"
            )
        index.append(int(want))
    if sum(isinstance(i, slice) for i in index) != 2:
        raise StmorphInputError(f"unsupported image axes {axes} {tuple(shape)}", file=path, expected="a 2-D plane")
    return tuple(index)


def _select(arr: Any, axes: str, z: int | None, channel: int | None, path: Path | None) -> np.ndarray:
    """The ``(Y, X)`` plane of ``arr`` (axes ``axes``) at ``z`` / ``channel``; clear errors otherwise."""
    out = arr[_plane_index(axes, arr.shape, z, channel, path)]
    return np.asarray(out) if not isinstance(out, np.ndarray) else out


def _read_tiff_plane(path: Path, z: int | None, channel: int | None) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        lvl = tf.series[0].levels[0]
        axes, shape = str(lvl.axes), tuple(int(s) for s in lvl.shape)
        index = _plane_index(axes, shape, z, channel, path)  # validates before any pixel is read
        # 1) memory map the whole level when it is stored uncompressed and contiguous
        try:
            mm = tifffile.memmap(path, series=0, level=0, mode="r")
            if tuple(mm.shape) == shape:
                return mm[index]
        except (ValueError, OSError, TypeError, tifffile.TiffFileError, IndexError):
            pass
        # 2) read only the page holding the plane
        page_axes = "YXS" if axes.endswith("YXS") else "YX"
        n_lead = len(axes) - len(page_axes)
        pages = lvl.pages
        if len(pages) == int(np.prod(shape[:n_lead])):
            flat = int(np.ravel_multi_index(index[:n_lead], shape[:n_lead])) if n_lead else 0
            plane = np.asarray(pages[flat].asarray())
            if page_axes == "YXS":
                plane = plane.reshape(shape[n_lead:])
                return np.ascontiguousarray(plane[..., index[-1]])
            return plane.reshape(shape[n_lead:])
        # 3) anything else (ImageJ hyperstacks stored in one page, odd layouts): read the level
        return np.ascontiguousarray(lvl.asarray()[index])


# ---------------------------------------------------------------------------------------------------------------
# StainImage
# ---------------------------------------------------------------------------------------------------------------
class StainImage:
    """One 2-D stain channel, read lazily.

    Parameters
    ----------
    source
        A path to an image file (TIFF, OME-TIFF, JPEG/PNG, zarr / OME-Zarr) or an in-memory 2-D array.
    z
        The z-plane to take from a stack (its ``Z`` axis, or the first axis of a plain 3-D stack).
    channel
        The channel to take from a multi-channel image (its ``C`` axis, the colour of an RGB composite, or the
        first axis of a plain 3-D stack when ``z`` is not given).
    component
        For a zarr store holding several arrays: the path of the array inside it (e.g. ``"masks/1"`` of a Xenium
        ``cells.zarr.zip``).

    Examples
    --------
    >>> img = StainImage(np.zeros((64, 64), dtype=np.uint16))
    >>> img.shape
    (64, 64)
    """

    def __init__(
        self, source: str | PathLike | np.ndarray, *, z: int | None = None, channel: int | None = None,
        component: str | None = None,
    ):
        self.z = None if z is None else int(z)
        self.channel = None if channel is None else int(channel)
        self.component = component or None
        self._array: np.ndarray | None = None
        self._shape: tuple[int, int] | None = None
        if isinstance(source, np.ndarray):
            if source.ndim != 2:
                raise StmorphInputError(
                    f"an in-memory image must be 2-D, got shape {source.shape}", expected="a (rows, columns) array"
                )
            self.path: Path | None = None
            self._array = source
        else:
            self.path = Path(source)
            if not self.path.exists():
                raise StmorphInputError("image not found", file=self.path, expected="an existing image file")

    # -- reading ---------------------------------------------------------------------------------------------
    def read(self) -> np.ndarray:
        """Return the 2-D plane (memory-mapped when possible, cached after the first call)."""
        if self._array is None:
            self._array = self._load()
        return self._array

    def window(self, r0: int, r1: int, c0: int, c1: int, *, fill: Any = 0) -> np.ndarray:
        """Rows ``r0:r1`` and columns ``c0:c1`` of the plane; parts outside the image are ``fill``.

        Only the window is read: from the memory map, or chunk by chunk from a zarr store or a compressed, tiled
        TIFF (through tifffile's zarr view), never the whole plane of a slide.
        """
        return _window(self._lazy_plane(), r0, r1, c0, c1, fill)

    def _lazy_plane(self) -> Any:
        """The plane as an array-like that reads only what is sliced (the plane itself once read or mapped)."""
        if self._array is not None or self.path is None:
            return self.read()
        if getattr(self, "_lazy", None) is None:
            kind = _kind(self.path)
            lazy: Any = None
            try:
                if kind == "zarr":
                    arr, axes = _open_zarr_array(self.path, self.component)
                    lazy = _PlaneView(arr, _plane_index(axes, arr.shape, self.z, self.channel, self.path))
                elif kind == "tiff":
                    lazy = self._tiff_view()
            except StmorphInputError:
                raise
            except Exception:  # no lazy view: fall back to reading the plane
                lazy = None
            self._lazy = lazy if lazy is not None else self.read()
        return self._lazy

    def _tiff_view(self) -> Any:
        import tifffile

        try:
            mm = tifffile.memmap(self.path, series=0, level=0, mode="r")
            axes, shape = image_axes(self.path)
            if tuple(mm.shape) == shape:
                return self.read()  # memory-mapped: slicing reads only the window
        except (ValueError, OSError, TypeError, tifffile.TiffFileError, IndexError):
            pass
        import zarr

        arr = zarr.open(tifffile.imread(self.path, aszarr=True, series=0, level=0), mode="r")
        axes, shape = image_axes(self.path)
        if tuple(arr.shape) != shape:
            return None
        return _PlaneView(arr, _plane_index(axes, shape, self.z, self.channel, self.path))

    def _load(self) -> np.ndarray:
        assert self.path is not None
        kind = _kind(self.path)
        try:
            if kind == "tiff":
                arr = _read_tiff_plane(self.path, self.z, self.channel)
            elif kind == "raster":
                from PIL import Image

                with Image.open(self.path) as im:
                    full = np.asarray(im)
                axes = "YXS" if full.ndim == 3 else "YX"
                arr = _select(full, axes, self.z, self.channel, self.path)
            else:
                zarr_arr, axes = _open_zarr_array(self.path, self.component)
                arr = _select(zarr_arr, axes, self.z, self.channel, self.path)
        except StmorphInputError:
            raise
        except Exception as exc:  # unreadable or corrupt file
            raise _unreadable(self.path, exc) from exc
        return arr

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the plane (from the file's metadata when not read yet)."""
        if self._array is not None:
            return tuple(int(s) for s in self._array.shape)  # type: ignore[return-value]
        if self._shape is None:
            axes, shape = image_axes(self.path, self.component)  # type: ignore[arg-type]
            self._shape = (shape[axes.index("Y")], shape[axes.index("X")])
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self.read().dtype

    def to_spec(self) -> dict[str, Any]:
        """A JSON-serialisable reference to this image (used by :meth:`SpatialSample.write`)."""
        spec = {"path": None if self.path is None else str(self.path.resolve()), "z": self.z, "channel": self.channel}
        if self.component:
            spec["component"] = self.component
        return spec

    def __repr__(self) -> str:
        src = "in-memory" if self.path is None else str(self.path)
        z = "" if self.z is None else f", z={self.z}"
        c = "" if self.channel is None else f", channel={self.channel}"
        k = "" if not self.component else f", component={self.component!r}"
        return f"{type(self).__name__}({src}{z}{c}{k})"


class _PlaneView:
    """One 2-D plane of a lazily read N-d array: ``view[rows, cols]`` reads only those rows and columns."""

    def __init__(self, arr: Any, index: tuple) -> None:
        self.arr, self.index = arr, index
        self.shape = tuple(int(n) for n, i in zip(arr.shape, index) if isinstance(i, slice))
        self.dtype = np.dtype(arr.dtype)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        keys = iter(key)
        full = tuple(next(keys) if isinstance(i, slice) else i for i in self.index)
        return np.asarray(self.arr[full])


def _window(arr: Any, r0: int, r1: int, c0: int, c1: int, fill: Any) -> np.ndarray:
    h, w = arr.shape
    r0, r1, c0, c1 = int(r0), int(r1), int(c0), int(c1)
    if r0 >= 0 and c0 >= 0 and r1 <= h and c1 <= w:
        return np.asarray(arr[r0:r1, c0:c1])
    out = np.full((max(r1 - r0, 0), max(c1 - c0, 0)), fill, dtype=arr.dtype)
    ra, rb, ca, cb = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if rb > ra and cb > ca:
        out[ra - r0 : rb - r0, ca - c0 : cb - c0] = arr[ra:rb, ca:cb]
    return out


class LabelImage(StainImage):
    """A cell segmentation as a raster of integer labels (0 = background), read lazily like :class:`StainImage`.

    Examples
    --------
    >>> lab = np.zeros((8, 8), dtype=np.int32); lab[2:5, 2:5] = 7
    >>> LabelImage(lab).window(1, 4, 1, 4).max()
    7
    """

    kind = "raster"

    def window(self, r0: int, r1: int, c0: int, c1: int, *, fill: Any = 0) -> np.ndarray:
        out = super().window(r0, r1, c0, c1, fill=fill)
        self._check_dtype(out.dtype)
        return out

    def _check_dtype(self, dtype: np.dtype) -> None:
        if not (np.issubdtype(dtype, np.integer) or np.dtype(dtype) == np.dtype(bool)):
            where = self.path if self.path is not None else "in-memory"
            raise StmorphInputError(
                f"a segmentation must hold integer labels, got {dtype} ({where})", file=self.path,
                expected="an integer label image (0 = background)",
            )

    def read(self) -> np.ndarray:
        arr = super().read()
        self._check_dtype(arr.dtype)
        return arr


# ---------------------------------------------------------------------------------------------------------------
# PolygonSegmentation
# ---------------------------------------------------------------------------------------------------------------
class PolygonSegmentation:
    """Cell polygons in pixels, rasterised on demand onto a ``shape`` grid (a pixel belongs to a cell when its
    centre lies inside the cell's polygon; where polygons overlap, the larger label wins).

    Parameters
    ----------
    vertices
        One row per vertex: ``label_id`` (int > 0), ``x``, ``y`` (pixels; ``x`` = column) and optionally ``part``
        (several rings of one cell, e.g. the parts of a multipolygon). Rows of one ring are in drawing order.
    shape
        ``(rows, columns)`` of the grid (the stains' grid).

    Examples
    --------
    >>> v = pd.DataFrame({"label_id": [3, 3, 3, 3], "x": [1.0, 4, 4, 1], "y": [1.0, 1, 4, 4]})
    >>> seg = PolygonSegmentation(v, (6, 6))
    >>> int((seg.read() == 3).sum())
    16
    """

    kind = "polygons"

    def __init__(self, vertices: pd.DataFrame, shape: tuple[int, int]):
        missing = [c for c in ("label_id", "x", "y") if c not in vertices.columns]
        if missing:
            raise StmorphInputError(f"polygon vertices lack columns {missing}", expected="label_id, x, y [, part]")
        v = vertices.loc[:, [c for c in ("label_id", "part", "x", "y") if c in vertices.columns]].copy()
        if "part" not in v:
            v["part"] = 0
        v["label_id"] = v["label_id"].astype(np.int64)
        v["part"] = v["part"].astype(np.int64)
        v["x"] = v["x"].astype(np.float64)
        v["y"] = v["y"].astype(np.float64)
        if not np.all(np.isfinite(v[["x", "y"]].to_numpy())):
            raise StmorphInputError("polygon vertices with NaN/inf coordinates", expected="finite pixel coordinates")
        if (v["label_id"] <= 0).any():
            raise StmorphInputError("polygon label ids must be > 0", column="label_id", expected="positive integers")
        self.vertices = v.sort_values(["label_id", "part"], kind="stable").reset_index(drop=True)
        self.shape = (int(shape[0]), int(shape[1]))
        g = self.vertices.groupby(["label_id", "part"], sort=True)
        b = g.agg(xmin=("x", "min"), xmax=("x", "max"), ymin=("y", "min"), ymax=("y", "max"), n=("x", "size"))
        b = b[b["n"] >= 3]
        self._bounds = b
        starts = self.vertices.groupby(["label_id", "part"], sort=True).indices
        self._rings = [starts[k] for k in b.index]
        self._tree: Any = None
        self._array: np.ndarray | None = None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int32) if self.label_ids.max(initial=0) < 2**31 else np.dtype(np.int64)

    def _index(self) -> Any:
        """An R-tree (shapely's STRtree) of the rings' bounding boxes: a window finds its polygons in log time,
        not by scanning every cell (a crop per cell would otherwise cost cells squared)."""
        if self._tree is None:
            b = self._bounds
            self._tree = shapely.STRtree(shapely.box(b["xmin"].to_numpy(), b["ymin"].to_numpy(),
                                                     b["xmax"].to_numpy(), b["ymax"].to_numpy()))
        return self._tree

    @property
    def label_ids(self) -> np.ndarray:
        """The labels that have a polygon."""
        return np.unique(self._bounds.index.get_level_values(0).to_numpy(np.int64))

    @property
    def path(self) -> None:
        return None

    def window(self, r0: int, r1: int, c0: int, c1: int, *, fill: Any = 0) -> np.ndarray:
        """The label raster of rows ``r0:r1``, columns ``c0:c1`` (only polygons touching the window are drawn)."""
        from skimage.draw import polygon as draw_polygon

        r0, r1, c0, c1 = int(r0), int(r1), int(c0), int(c1)
        out = np.zeros((max(r1 - r0, 0), max(c1 - c0, 0)), dtype=self.dtype)
        b = self._bounds
        hit = np.sort(self._index().query(shapely.box(c0 - 0.5, r0 - 0.5, c1 - 0.5, r1 - 0.5)))
        x = self.vertices["x"].to_numpy()
        y = self.vertices["y"].to_numpy()
        labels = b.index.get_level_values(0).to_numpy()
        for k in hit:  # sorted by label: larger labels drawn last win
            rows = self._rings[k]
            rr, cc = draw_polygon(y[rows] - r0, x[rows] - c0, shape=out.shape)
            out[rr, cc] = labels[k]
        h, w = self.shape
        if r0 < 0 or c0 < 0 or r1 > h or c1 > w:  # outside the grid
            rows_out = (np.arange(r0, r1) < 0) | (np.arange(r0, r1) >= h)
            cols_out = (np.arange(c0, c1) < 0) | (np.arange(c0, c1) >= w)
            out[rows_out, :] = fill
            out[:, cols_out] = fill
        return out

    def read(self) -> np.ndarray:
        """The whole label raster (cached)."""
        if self._array is None:
            self._array = self.window(0, self.shape[0], 0, self.shape[1])
        return self._array

    def __repr__(self) -> str:
        return f"PolygonSegmentation({len(self.label_ids)} cells on a {self.shape[0]} x {self.shape[1]} grid)"


Segmentation = LabelImage | PolygonSegmentation


def labels_at(segmentation: Segmentation, x: np.ndarray, y: np.ndarray, *, tile: int = 2048) -> np.ndarray:
    """The segmentation label under each point (pixels, ``x`` = column); 0 outside any cell or the grid.

    Reads the segmentation tile by tile (``tile`` pixels), so a polygon segmentation is never rasterised whole.

    Parameters
    ----------
    segmentation
        A :class:`LabelImage` or :class:`PolygonSegmentation`.
    x, y
        Point coordinates in pixels (pixel centres at integers).
    tile
        Tile side in pixels.

    Returns
    -------
    ``(n,)`` int64 labels.

    Examples
    --------
    >>> lab = np.zeros((8, 8), dtype=np.int32); lab[2:5, 2:5] = 7
    >>> labels_at(LabelImage(lab), np.array([3.2, 0.0]), np.array([2.9, 0.0])).tolist()
    [7, 0]
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    out = np.zeros(len(x), dtype=np.int64)
    if len(x) == 0:
        return out
    h, w = segmentation.shape
    finite = np.isfinite(x) & np.isfinite(y)  # NaN/inf -> -1 before the cast (no invalid-cast warning)
    col = np.floor(np.where(finite, x, -1.0) + 0.5).astype(np.int64)
    row = np.floor(np.where(finite, y, -1.0) + 0.5).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & finite
    if not inside.any():
        return out
    if isinstance(segmentation, LabelImage) and segmentation.path is None or (
        isinstance(segmentation, LabelImage) and h * w <= tile * tile * 4
    ):
        arr = segmentation.read()
        out[inside] = arr[row[inside], col[inside]]
        return out
    tr, tc = row // tile, col // tile
    key = pd.Series(tr[inside] * ((w // tile) + 1) + tc[inside])
    idx_inside = np.flatnonzero(inside)
    for _, rows in key.groupby(key.to_numpy()).indices.items():
        ii = idx_inside[rows]
        r0, c0 = int(tr[ii[0]] * tile), int(tc[ii[0]] * tile)
        win = segmentation.window(r0, min(r0 + tile, h), c0, min(c0 + tile, w))
        out[ii] = win[row[ii] - r0, col[ii] - c0]
    return out


def open_channels(
    path: str | PathLike, names: Sequence[str] | None = None, *, z: int | None = None, prefix: str | None = None
) -> dict[str, StainImage]:
    """Every channel of an image file as a named :class:`StainImage` (RGB composites split into colours).

    Parameters
    ----------
    path
        The image file (TIFF/OME-TIFF, JPEG/PNG, zarr).
    names
        Channel names in file order; default the names stored in the file (:func:`image_channel_names`), else
        ``<prefix><index>``.
    z
        The z-plane for stacks with a ``Z`` axis (default the middle plane).
    prefix
        Prefix of generated names (default the file's stem and ``"_"``).

    Returns
    -------
    dict of name -> StainImage (file order).

    Examples
    --------
    >>> open_channels("CellComposite_F001.jpg")  # doctest: +SKIP
    {'R': StainImage(...), 'G': StainImage(...), 'B': StainImage(...)}
    """
    path = Path(path)
    axes, shape = image_axes(path)
    if "Z" in axes and z is None:
        z = shape[axes.index("Z")] // 2
    n = _channel_count(axes, shape)
    if names is None:
        names = image_channel_names(path)
    if names is None:
        if n == 1:
            stem = path.name.split(".")[0]
            names = [stem if prefix is None else prefix.rstrip("_")]
        else:
            pre = prefix if prefix is not None else path.name.split(".")[0] + "_"
            names = [f"{pre}{i}" for i in range(n)]
    names = list(names)
    if len(names) != n:
        raise StmorphInputError(
            f"{len(names)} channel names for an image with {n} channels (axes {axes}, shape {shape})", file=path,
            expected=f"{n} names",
        )
    if len(set(names)) != len(names):
        raise StmorphInputError(f"repeated channel names {names}", file=path, expected="unique channel names")
    if n == 1:
        return {names[0]: StainImage(path, z=z if "Z" in axes else None)}
    return {nm: StainImage(path, z=z if "Z" in axes else None, channel=i) for i, nm in enumerate(names)}
