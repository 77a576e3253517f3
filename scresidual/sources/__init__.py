"""Frozen pretrained sources: scvi-tools models, foundation models, any torch module."""

from ._autoencoder import pretrain_autoencoder
from ._base import FrozenSource, embed
from ._geneformer import GeneformerSource
from ._genes import MIN_GENE_OVERLAP, MIN_VOCAB_OVERLAP, align_genes, gene_overlap
from ._scgpt import ScGPTSource
from ._scvi import ScviSource, pretrain_scvi
from ._torch import ObsmSource, TorchSource

__all__ = [
    "MIN_GENE_OVERLAP",
    "MIN_VOCAB_OVERLAP",
    "FrozenSource",
    "GeneformerSource",
    "ObsmSource",
    "ScGPTSource",
    "ScviSource",
    "TorchSource",
    "align_genes",
    "embed",
    "gene_overlap",
    "pretrain_autoencoder",
    "pretrain_scvi",
]
