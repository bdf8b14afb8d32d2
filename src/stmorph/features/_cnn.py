"""Pretrained-CNN features of stain crops (MUSE's image features), offline by design.

MUSE described each cell by deep features of an ImageNet-trained Inception-v3 on its crop, then reduced them by
PCA (500 components). Here:

* the model is any :class:`torch.nn.Module` (an object, a TorchScript file, a ``timm`` architecture when timm is
  installed, or the built-in :class:`SmallResNet`), with weights from a **local file**: nothing is downloaded at
  run time, and a missing file is a :class:`~stmorph.errors.StmorphInputError` naming it;
* every stain channel is fed separately as a grey image repeated to 3 channels, resized to 299 x 299
  (Inception-v3 input) and ImageNet-normalised; the per-channel feature vectors are concatenated;
* PCA (:class:`sklearn.decomposition.PCA`) to ``n_components``.

timm needs torchvision, which has no CPU build in this environment, so timm is an optional extra
(``pip install stmorph[cnn]``) imported only when a ``"timm:<name>"`` model is asked for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._utils import as_generator, progress, resolve_device, seed_torch
from ..errors import StmorphInputError

__all__ = ["SmallResNet", "load_cnn", "extract_cnn_features", "cnn_features", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Cells :func:`cnn_features` crops at once; its forward batches restart at each block (the distributed function
#: reproduces these batches, see :mod:`stmorph.distributed._cnn`).
_CROP_BLOCK = 1024


def _torch():
    import torch

    return torch


def _build_small_resnet(in_channels: int, widths: tuple[int, ...]):
    torch = _torch()
    nn = torch.nn

    class _Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.skip = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))

    class _SmallResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
            blocks = []
            cin = widths[0]
            for i, w in enumerate(widths):
                blocks.append(_Block(cin, w, 1 if i == 0 else 2))
                cin = w
            self.blocks = nn.Sequential(*blocks)
            self.num_features = widths[-1]

        def forward(self, x):
            return self.blocks(self.stem(x)).mean(dim=(2, 3))

    return _SmallResNet()


def SmallResNet(in_channels: int = 3, widths: Sequence[int] = (32, 64, 128, 256)):  # noqa: N802 - a class-like factory
    """A small ResNet-style feature extractor in pure torch (global average pooled output).

    Used where no pretrained ImageNet model is available offline, and to test the weights-file path: save its
    ``state_dict()`` with :func:`torch.save` and load it with ``load_cnn("small_resnet", weights=PATH)``.

    Parameters
    ----------
    in_channels
        Input channels (3 for ImageNet-style grey-to-RGB input).
    widths
        Channels of the four residual stages; the feature size is ``widths[-1]``.

    Returns
    -------
    torch.nn.Module
        ``forward(x: (B, in_channels, H, W)) -> (B, widths[-1])``.

    Examples
    --------
    >>> import torch
    >>> net = SmallResNet(widths=(8, 16))
    >>> net.eval()(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 16])
    """
    return _build_small_resnet(int(in_channels), tuple(int(w) for w in widths))


def _missing_weights(path: Path, what: str) -> StmorphInputError:
    return StmorphInputError(
        f"the {what} weights file does not exist; stmorph never downloads weights at run time. Fetch the weights on "
        "a machine with network access (e.g. timm.create_model(name, pretrained=True) then "
        "torch.save(model.state_dict(), PATH)) and pass weights=PATH",
        file=path,
        expected="a local state_dict (.pt/.pth/.safetensors) or TorchScript file",
    )


def _load_state_dict(path: Path) -> dict[str, Any]:
    torch = _torch()
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - optional
            raise ImportError("reading .safetensors weights needs the 'safetensors' package") from exc
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StmorphInputError(
            f"cannot read the weights ({type(exc).__name__}: {exc})", file=path, expected="a torch state_dict file"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise StmorphInputError(f"the weights file holds a {type(obj).__name__}", file=path, expected="a state_dict")
    return obj


def load_cnn(
    model: Any = "small_resnet",
    weights: str | PathLike | None = None,
    *,
    strict: bool = True,
    random_state: int | None = 0,
):
    """Build a feature-extractor network, offline.

    Parameters
    ----------
    model
        * a :class:`torch.nn.Module` (used as is; ``weights`` then loads a state_dict into it);
        * a path to a TorchScript file (``torch.jit.save``) - loaded with :func:`torch.jit.load`;
        * ``"small_resnet"`` - the built-in :func:`SmallResNet`;
        * ``"timm:<architecture>"`` - ``timm.create_model(<architecture>, pretrained=False, num_classes=0)``
          (needs timm; e.g. ``"timm:inception_v3"`` as in MUSE).
    weights
        Local state_dict file (``.pt``, ``.pth`` or ``.safetensors``) to load; must exist. ``None``: keep the
        (random, seeded by ``random_state``) initialisation - for tests, not for real features.
    strict
        Passed to :meth:`torch.nn.Module.load_state_dict`.
    random_state
        Seed of the random initialisation.

    Returns
    -------
    torch.nn.Module
        In eval mode, on the CPU.

    Examples
    --------
    >>> net = load_cnn("small_resnet")
    >>> load_cnn("small_resnet", weights="/nonexistent/w.pt")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    StmorphInputError: file '/nonexistent/w.pt': the small_resnet weights file does not exist ...
    """
    torch = _torch()
    if random_state is not None:
        seed_torch(int(random_state))
    wpath = None if weights is None else Path(weights)
    if isinstance(model, torch.nn.Module):
        net, what = model, type(model).__name__
    elif isinstance(model, str | PathLike) and (Path(model).suffix in (".pt", ".pth", ".ts", ".jit")):
        p = Path(model)
        if not p.exists():
            raise _missing_weights(p, "TorchScript model")
        try:
            net = torch.jit.load(str(p), map_location="cpu")
        except Exception as exc:
            raise StmorphInputError(
                f"not a TorchScript file ({type(exc).__name__}); for a state_dict pass model=<architecture> and "
                "weights=PATH",
                file=p,
                expected="a file written by torch.jit.save",
            ) from exc
        what = "TorchScript"
    elif model == "small_resnet":
        net, what = SmallResNet(), "small_resnet"
    elif isinstance(model, str) and model.startswith("timm:"):
        try:
            import timm
        except ImportError as exc:
            raise ImportError(
                f"model={model!r} needs timm (pip install 'stmorph[cnn]'; timm requires torchvision). Without it, "
                "pass any torch.nn.Module, a TorchScript file, or model='small_resnet'"
            ) from exc
        net = timm.create_model(model[5:], pretrained=False, num_classes=0)
        what = model
    else:
        raise StmorphInputError(
            f"unknown model {model!r}",
            expected="a torch.nn.Module, a TorchScript file path, 'small_resnet' or 'timm:<architecture>'",
        )
    if wpath is not None:
        if not wpath.exists():
            raise _missing_weights(wpath, what)
        state = _load_state_dict(wpath)
        try:
            net.load_state_dict(state, strict=strict)
        except RuntimeError as exc:
            raise StmorphInputError(
                f"the weights do not fit the {what} architecture: {str(exc)[:300]}",
                file=wpath,
                expected=f"a state_dict saved from {what}",
            ) from exc
    return net.eval().to("cpu")


def _prepare(batch, input_size: int, in_chans: int, normalize: str | None):
    torch = _torch()
    import torch.nn.functional as F

    x = batch.unsqueeze(1)  # (B, 1, S, S)
    if x.shape[-1] != input_size or x.shape[-2] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = x.expand(-1, in_chans, -1, -1)
    if normalize == "imagenet" and in_chans == 3:
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x.contiguous()


def extract_cnn_features(
    crops: np.ndarray,
    model: Any,
    *,
    input_size: int = 299,
    in_chans: int = 3,
    normalize: Literal["imagenet"] | None = "imagenet",
    batch_size: int = 32,
    device: str = "auto",
) -> np.ndarray:
    """Per-channel CNN features of crops, concatenated over channels.

    Parameters
    ----------
    crops
        ``(n, C, S, S)`` crops scaled to ``[0, 1]`` (e.g. ``crop_stains(normalize="crop")``).
    model
        A network from :func:`load_cnn` (any module mapping ``(B, in_chans, H, W)`` to ``(B, D)`` or to a
        ``(B, D, h, w)`` map, which is averaged over space).
    input_size
        Side the crops are resized to (299: Inception-v3).
    in_chans
        Channels the model expects; each stain channel is repeated to fill them.
    normalize
        ``"imagenet"``: subtract the ImageNet mean and divide by its standard deviation (3-channel models).
    batch_size
        Crops per forward pass.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.

    Returns
    -------
    ``(n, C * D)`` float32, channel 0's features first.

    Examples
    --------
    >>> net = load_cnn(SmallResNet(widths=(8, 16)))
    >>> extract_cnn_features(np.zeros((2, 2, 32, 32), np.float32), net, input_size=64).shape
    (2, 32)
    """
    torch = _torch()
    crops = np.asarray(crops, dtype=np.float32)
    if crops.ndim != 4:
        raise StmorphInputError(f"crops have shape {crops.shape}", expected="(n, C, S, S)")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    n, c = crops.shape[:2]
    outs: list[np.ndarray] = []
    starts = range(0, n, max(1, int(batch_size)))
    with torch.inference_mode():
        for s in progress(starts, desc="CNN features", total=len(starts), unit="batch"):
            chunk = torch.from_numpy(np.nan_to_num(crops[s : s + batch_size])).to(dev)
            per_channel = []
            for ch in range(c):
                y = model(_prepare(chunk[:, ch], input_size, in_chans, normalize))
                if isinstance(y, tuple | list):
                    y = y[0]
                if y.ndim == 4:
                    y = y.mean(dim=(2, 3))
                if y.ndim != 2:
                    raise StmorphInputError(
                        f"the model returned a tensor of shape {tuple(y.shape)}",
                        expected="(batch, features) or (batch, features, h, w) - e.g. timm num_classes=0",
                    )
                per_channel.append(y.float().cpu().numpy())
            outs.append(np.concatenate(per_channel, axis=1))
    return np.concatenate(outs, axis=0) if outs else np.zeros((0, 0), np.float32)


def cnn_features(
    data: Any,
    model: Any = "small_resnet",
    weights: str | PathLike | None = None,
    *,
    size: int = 100,
    channels: Sequence[str] | None = None,
    n_components: int | None = 500,
    input_size: int = 299,
    crop_normalize: Literal["crop", "image"] = "crop",
    edge: Literal["shift", "pad"] = "shift",
    batch_size: int = 32,
    device: str = "auto",
    key_added: str = "X_cnn",
    random_state: int | None = 0,
    masks: Any = None,
    mask_ids: Any = None,
    crop_um: float | None = None,
    copy: bool = False,
):
    """MUSE-style deep image features: CNN on every channel's crop, concatenated, PCA-reduced.

    Parameters
    ----------
    data
        A :class:`~stmorph.SpatialSample` (crops are cut around its centroids) or an ``(n, C, S, S)`` array of
        crops in ``[0, 1]`` (then the reduced features are returned as an array).
    model, weights
        See :func:`load_cnn` (a ready module is used as is when ``weights`` is ``None``).
    size
        Crop side in pixels (sample input only).
    masks, mask_ids
        Zero the pixels outside each cell's own mask (sample input only): ``True`` the sample's segmentation, or a
        label image; see :func:`stmorph.crops.resolve_masks`.
    crop_um
        Crop side in micrometres instead of ``size`` pixels.
    channels
        Channels to use (sample input only); default all.
    n_components
        PCA size (MUSE: 500), capped at ``min(n_cells, n_features)``; ``None`` keeps the raw features.
    input_size
        Resize target (299 for Inception-v3).
    crop_normalize
        Intensity scaling of the crops (:func:`stmorph.crops.crop_stains`): ``"crop"`` min-max per crop and
        channel, or ``"image"``.
    edge
        Crop placement at the border.
    batch_size, device
        See :func:`extract_cnn_features`.
    key_added
        ``obsm`` key (sample input).
    random_state
        Seed of the PCA solver and of a random model initialisation.
    copy
        Return a new sample instead of writing into ``data.adata`` (sample input).

    Returns
    -------
    For array input: ``(n, n_components)`` float32. For a sample: ``None`` in place (or the new sample with
    ``copy=True``), writing ``obsm[key_added]`` and ``uns[key_added]`` (model, weights file, channels, raw feature
    size, PCA explained variance ratio, timing).

    Examples
    --------
    >>> crops = np.random.default_rng(0).random((6, 2, 32, 32)).astype(np.float32)
    >>> cnn_features(crops, SmallResNet(widths=(8, 16)), n_components=4, input_size=64).shape
    (6, 4)
    """
    t0 = time.perf_counter()
    net = load_cnn(model, weights, random_state=random_state)
    is_array = isinstance(data, np.ndarray)
    if is_array:
        feats = extract_cnn_features(data, net, input_size=input_size, batch_size=batch_size, device=device)
        return _pca(feats, n_components, random_state)[0]
    sample = data
    if copy:
        sample = sample.copy()
    chans = list(sample.channel_names if channels is None else channels)
    missing = [c for c in chans if c not in sample.images]
    if missing or not chans:
        raise StmorphInputError(f"channels {missing or chans} not usable", expected=f"some of {sample.channel_names}")
    from ..crops import check_masks_found, crop_masks, crop_size_px, resolve_masks
    from ._cellprofiler import _crop_functions

    crop_boxes, crop_stains = _crop_functions()
    size = crop_size_px(sample, None if crop_um is not None else size, crop_um, what="CNN crop")
    images = [sample.images[c].read() for c in chans]
    boxes = crop_boxes(sample.centroids, size, images[0].shape, edge=edge)
    resolved = resolve_masks(sample, masks, mask_ids)
    rng_kw: dict[str, Any] = {}
    if crop_normalize == "image":
        rng_kw["image_range"] = [(float(np.min(im)), float(np.max(im))) for im in images]
    parts = []
    block = _CROP_BLOCK
    for b0 in range(0, sample.n_cells, block):
        crops = crop_stains(images, None, size, boxes=boxes[b0 : b0 + block], edge=edge, normalize=crop_normalize, **rng_kw)
        if resolved is not None:
            mk = crop_masks(resolved[0], boxes[b0 : b0 + block], size, resolved[1][b0 : b0 + block])
            check_masks_found(mk, sample.cell_ids[b0 : b0 + block])
            crops *= mk[:, None]
        parts.append(extract_cnn_features(crops, net, input_size=input_size, batch_size=batch_size, device=device))
    feats = np.concatenate(parts, axis=0)
    reduced, evr = _pca(feats, n_components, random_state)
    sample.adata.obsm[key_added] = reduced
    sample.adata.uns[key_added] = {
        "method": "cnn",
        "model": model if isinstance(model, str) else type(model).__name__,
        "weights": None if weights is None else str(Path(weights).resolve()),
        "channels": chans,
        "size": int(size),
        "input_size": int(input_size),
        "crop_normalize": crop_normalize,
        "masks": resolved is not None,
        "n_raw_features": int(feats.shape[1]),
        "n_components": int(reduced.shape[1]),
        "explained_variance_ratio": None if evr is None else evr.tolist(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return sample if copy else None


def _pca(feats: np.ndarray, n_components: int | None, random_state: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    if n_components is None:
        return feats.astype(np.float32), None
    from sklearn.decomposition import PCA

    k = int(min(n_components, feats.shape[0], feats.shape[1]))
    if k < 1:
        raise StmorphInputError(f"cannot reduce {feats.shape} features", expected="at least one cell and one feature")
    seed = int(as_generator(random_state).integers(2**31 - 1))
    pca = PCA(n_components=k, random_state=seed)
    return pca.fit_transform(feats).astype(np.float32), pca.explained_variance_ratio_
