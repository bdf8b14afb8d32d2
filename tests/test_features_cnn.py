"""CNN features: offline weights (saved and reloaded), per-channel concatenation, 299 px resize, PCA."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from stmorph.errors import StmorphInputError
from stmorph.features import SmallResNet, cnn_features, extract_cnn_features, load_cnn
from stmorph.sample import SpatialSample, StainImage

WIDTHS = (8, 16)


def _crops(n: int = 6, c: int = 2, s: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, c, s, s)).astype(np.float32)


def test_weights_saved_and_reloaded_give_identical_features(tmp_path):
    net = load_cnn(SmallResNet(widths=WIDTHS), random_state=1)
    crops = _crops()
    f1 = extract_cnn_features(crops, net, input_size=64)
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    other = load_cnn(SmallResNet(widths=WIDTHS), random_state=2)  # a different random initialisation ...
    assert not np.allclose(extract_cnn_features(crops, other, input_size=64), f1)
    reloaded = load_cnn(SmallResNet(widths=WIDTHS), weights=path, random_state=2)  # ... replaced by the file
    np.testing.assert_allclose(extract_cnn_features(crops, reloaded, input_size=64), f1, rtol=1e-5, atol=1e-6)
    # the built-in architecture by name, wrapped in a checkpoint dict
    big = load_cnn("small_resnet", random_state=3)
    torch.save({"state_dict": big.state_dict()}, tmp_path / "ckpt.pth")
    again = load_cnn("small_resnet", weights=tmp_path / "ckpt.pth", random_state=4)
    x = torch.rand(2, 3, 48, 48)
    torch.testing.assert_close(again(x), big(x))


def test_torchscript_file(tmp_path):
    net = load_cnn(SmallResNet(widths=WIDTHS), random_state=5)
    scripted = torch.jit.trace(net, torch.zeros(1, 3, 64, 64))
    path = tmp_path / "model.pt"
    scripted.save(str(path))
    loaded = load_cnn(path)
    crops = _crops(3)
    np.testing.assert_allclose(
        extract_cnn_features(crops, loaded, input_size=64), extract_cnn_features(crops, net, input_size=64), atol=1e-5
    )


def test_missing_or_wrong_weights_name_the_file(tmp_path):
    missing = tmp_path / "inception_v3.pth"
    with pytest.raises(StmorphInputError, match="inception_v3.pth") as exc:
        load_cnn("small_resnet", weights=missing)
    assert "never downloads" in str(exc.value)
    with pytest.raises(StmorphInputError, match="model.pt"):
        load_cnn(tmp_path / "model.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save(SmallResNet(widths=WIDTHS).state_dict(), wrong)
    with pytest.raises(StmorphInputError, match="do not fit"):
        load_cnn("small_resnet", weights=wrong)
    with pytest.raises(StmorphInputError, match="unknown model"):
        load_cnn("resnet9000")


def test_timm_is_optional():
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torchvision"):
            load_cnn("timm:inception_v3")
    else:  # pragma: no cover - only where timm is installed
        net = load_cnn("timm:resnet18")
        assert extract_cnn_features(_crops(2), net, input_size=64).shape[0] == 2


class _Recorder(torch.nn.Module):
    """Mean of each input channel + records the input shape."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return x.mean(dim=(2, 3))


def test_resize_channel_repeat_normalisation_and_concatenation():
    rec = _Recorder()
    crops = _crops(5, c=2, s=20)
    f = extract_cnn_features(crops, rec, batch_size=2)
    assert all(s[1:] == (3, 299, 299) for s in rec.shapes)  # Inception-v3 input, grey repeated to RGB
    assert f.shape == (5, 6)
    # bilinear resize keeps the mean roughly; ImageNet normalisation is (m - mean_c) / std_c per RGB channel
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for ch in range(2):
        m = crops[:, ch].mean(axis=(1, 2))[:, None]
        np.testing.assert_allclose(f[:, 3 * ch : 3 * ch + 3], (m - mean) / std, atol=0.05)
    # per-channel features are independent: channel 1 alone gives the second half
    f1 = extract_cnn_features(crops[:, 1:], _Recorder())
    np.testing.assert_allclose(f[:, 3:], f1, atol=1e-6)
    raw = extract_cnn_features(crops[:, :1], _Recorder(), normalize=None, input_size=20)
    np.testing.assert_allclose(raw[:, 0], crops[:, 0].mean(axis=(1, 2)), atol=1e-6)


def test_pca_matches_sklearn_and_caps_components():
    from sklearn.decomposition import PCA

    crops = _crops(8, c=2, s=16)
    net = load_cnn(SmallResNet(widths=WIDTHS), random_state=0)
    raw = extract_cnn_features(crops, net, input_size=48)
    red = cnn_features(crops, net, n_components=500, input_size=48)
    assert red.shape == (8, 8)  # capped at n_cells
    ref = PCA(n_components=8).fit_transform(raw)
    # components agree up to sign
    for k in range(6):
        assert abs(np.corrcoef(red[:, k], ref[:, k])[0, 1]) > 0.999
    np.testing.assert_allclose(cnn_features(crops, net, n_components=None, input_size=48), raw, atol=1e-6)


def test_cnn_features_on_a_sample():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 4000, (80, 80)).astype(np.uint16)
    n = 5
    adata = ad.AnnData(np.ones((n, 1), np.float32), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]))
    adata.obsm["spatial"] = rng.uniform(10, 70, (n, 2))
    s = SpatialSample(adata, images={"DAPI": StainImage(img), "membrane": StainImage(img[::-1].copy())})
    net = SmallResNet(widths=WIDTHS)
    assert cnn_features(s, net, size=16, n_components=3, input_size=48) is None
    x = s.adata.obsm["X_cnn"]
    info = s.adata.uns["X_cnn"]
    assert x.shape == (5, 3) and info["n_raw_features"] == 32 and info["channels"] == ["DAPI", "membrane"]
    assert len(info["explained_variance_ratio"]) == 3
    out = cnn_features(s, net, size=16, n_components=2, input_size=48, channels=["DAPI"], key_added="X_d", copy=True)
    assert "X_d" in out.adata.obsm and "X_d" not in s.adata.obsm
    with pytest.raises(StmorphInputError):
        cnn_features(s, net, channels=["GFP"])
