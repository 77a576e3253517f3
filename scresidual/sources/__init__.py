"""Frozen pretrained sources: scvi-tools models, foundation models, any torch module."""

from .._genes import (
    MIN_GENE_OVERLAP,
    MIN_VOCAB_OVERLAP,
    align_genes,
    gene_overlap,
    iter_aligned_genes,
)
from ._autoencoder import pretrain_autoencoder
from ._base import FrozenSource, embed
from ._geneformer import GeneformerSource
from ._pretrain import SourceClassifier, pretrain_mlp_source, pretrain_source, source_outputs
from ._scgpt import ScGPTModel, ScGPTSource
from ._scvi import ScviSource, pretrain_scvi
from ._torch import ObsmSource, TorchSource

__all__ = [
    "MIN_GENE_OVERLAP",
    "MIN_VOCAB_OVERLAP",
    "FrozenSource",
    "GeneformerSource",
    "ObsmSource",
    "ScGPTModel",
    "ScGPTSource",
    "ScviSource",
    "SourceClassifier",
    "TorchSource",
    "align_genes",
    "embed",
    "gene_overlap",
    "iter_aligned_genes",
    "pretrain_autoencoder",
    "pretrain_mlp_source",
    "pretrain_scvi",
    "pretrain_source",
    "source_outputs",
]
