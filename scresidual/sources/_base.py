"""The frozen-source interface: any pretrained model that maps cells to an embedding."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from anndata import AnnData

from .._constants import SOURCE_KEY
from .._docs import doc_copy, doc_key_added_obsm, doc_params, doc_progress
from .._errors import ScResidualError


class FrozenSource(ABC):
    """A pretrained model used frozen: never trained, only asked for embeddings.

    Subclasses load one model format and implement :meth:`embed`.
    """

    name: str = "source"

    @property
    @abstractmethod
    def n_latent(self) -> int:
        """Width of the embedding."""

    @abstractmethod
    def embed(
        self, adata: AnnData, *, batch_size: int = 1024, progress: bool | None = None
    ) -> np.ndarray:
        """Embed every cell of ``adata``; returns ``float32`` of shape ``(n_obs, n_latent)``."""

    def __call__(self, adata: AnnData, **kwargs) -> np.ndarray:
        return self.embed(adata, **kwargs)


@doc_params(doc_copy=doc_copy, doc_key_added_obsm=doc_key_added_obsm, doc_progress=doc_progress)
def embed(
    adata: AnnData,
    source: FrozenSource,
    *,
    key_added: str = SOURCE_KEY,
    batch_size: int = 1024,
    progress: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Embed ``adata`` with a frozen source and store the result in ``obsm[key_added]``.

    Parameters
    ----------
    adata
        Cells to embed.
    source
        A loaded :class:`FrozenSource`.
    key_added
        {doc_key_added_obsm}
    batch_size
        Cells per forward pass.
    progress
        {doc_progress}
    copy
        {doc_copy}

    """
    Z = np.asarray(source.embed(adata, batch_size=batch_size, progress=progress), dtype=np.float32)
    if Z.shape[0] != adata.n_obs:
        raise ScResidualError(
            f"{source.name} returned {Z.shape[0]} embeddings for {adata.n_obs} cells; "
            "the source must embed every cell."
        )
    if not np.isfinite(Z).all():
        raise ScResidualError(
            f"{source.name} produced NaN/inf embeddings; check the input for NaN or extreme values."
        )
    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = Z
    return adata if copy else None
