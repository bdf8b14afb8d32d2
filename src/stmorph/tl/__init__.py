"""stmorph.tl: tools that learn per-cell representations and write them into AnnData / MuData.

* :func:`vae` - the study's cell-crop VAEs (LS1 spots, LS2 stains, LS3-LS5 both) into ``obsm``
* :func:`muse` - MUSE joint embedding and clusters of a MuData
* baselines of MUSE: :func:`pca_single`, :func:`concat_pca`, :func:`cca`, :func:`multiview_ae`, :func:`mofa`
"""

from ._baselines import cca, concat_pca, mofa, multiview_ae, pca_single
from ._muse import muse
from ._vae import train_vae, vae

__all__ = ["cca", "concat_pca", "mofa", "multiview_ae", "muse", "pca_single", "train_vae", "vae"]
