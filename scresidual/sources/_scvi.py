"""Frozen scvi-tools models (``save()`` directories and scvi-hub folders) as sources."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import ScResidualError
from ._base import FrozenSource
from ._genes import MIN_GENE_OVERLAP, align_genes

logger = logging.getLogger("scresidual")


FIX = "re-save the model with scvi-tools >= 1.0 or download it again"


def _read_attributes(model_dir: Path, trust_pickle: bool) -> dict:
    """The ``attr_dict`` of ``model.pt``, read as data (nothing in the file is run)."""
    from .._safe_load import torch_load_data

    path = model_dir / "model.pt"
    if not path.is_file():
        raise ScResidualError(
            f"{model_dir} is not an scvi-tools model directory (no model.pt); pass the folder "
            "written by model.save() or an scvi-hub download."
        )
    saved = torch_load_data(path, trust_pickle=trust_pickle, fix=FIX)
    attrs = saved.get("attr_dict") if isinstance(saved, dict) else None
    if not isinstance(attrs, dict) or not isinstance(attrs.get("registry_"), dict):
        raise ScResidualError(f"{path} has no scvi-tools model attributes; {FIX}.")
    return attrs


class ScviSource(FrozenSource):
    """A pretrained scvi-tools model (SCVI, SCANVI, …) used frozen for its latent space.

    The query is prepared as scvi-tools does for reference mapping: genes re-ordered to the
    model's, missing genes zero-filled (with an error below ``min_overlap``). Cells of the
    query are assigned the reference batch ``batch`` (default: the first one), so the
    encoder sees a batch it was trained on and no new weights are created.
    """

    name = "scvi-tools model"

    def __init__(
        self, model, model_dir: Path, *, layer: str | None, batch, min_overlap: float,
        trust_pickle: bool = False,
    ):
        self.model, self.model_dir = model, model_dir
        self.layer, self.batch, self.min_overlap = layer, batch, min_overlap
        self.trust_pickle = trust_pickle

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        layer: str | None = None,
        batch: str | None = None,
        min_overlap: float = MIN_GENE_OVERLAP,
        trust_pickle: bool = False,
    ) -> ScviSource:
        """Load a saved scvi-tools model directory.

        Parameters
        ----------
        model_dir
            Folder with ``model.pt`` (``model.save()`` or an scvi-hub model).
        layer
            Layer of the query holding raw counts (default ``X``).
        batch
            Reference batch to assign query cells to, for models trained with ``batch_key``.
        min_overlap
            Smallest fraction of model genes that must be in the query.
        trust_pickle
            ``model.pt`` is read as data only (tensors, numpy arrays, pandas frames); a file
            holding other Python objects is refused, since loading them could run code. Pass
            ``True`` only for a file from someone you trust.

        """
        import scvi

        model_dir = Path(model_dir)
        attrs = _read_attributes(model_dir, trust_pickle)
        registry = attrs["registry_"]
        model_cls = getattr(scvi.model, registry.get("model_name", "SCVI"), None)
        if model_cls is None:
            raise ScResidualError(
                f"{model_dir} holds an {registry.get('model_name')} model, which this version of "
                "scvi-tools does not provide; upgrade scvi-tools."
            )
        src = cls(
            None, model_dir, layer=layer, batch=batch, min_overlap=min_overlap,
            trust_pickle=trust_pickle,
        )
        src.registry, src.model_cls = registry, model_cls
        try:
            params = attrs.get("init_params_", {})
            src._n_latent = int(
                params.get("non_kwargs", {}).get("n_latent") or params.get("n_latent") or 10
            )
            src.genes = np.asarray(
                registry["field_registries"]["X"]["state_registry"]["column_names"]
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ScResidualError(
                f"{model_dir / 'model.pt'} lacks the scvi-tools gene registry ({err!r}); {FIX}."
            ) from err
        return src

    def _query(self, adata: AnnData) -> AnnData:
        X = align_genes(
            adata, self.genes, layer=self.layer, min_overlap=self.min_overlap,
            model_name=f"scvi model in {self.model_dir}",
        )
        from .._validate import check_finite

        check_finite(X, "the query counts")
        if X.nnz and X.data.min() < 0:
            raise ScResidualError(
                "the query has negative values but the scvi model needs raw counts; pass layer= "
                "naming the counts layer."
            )
        setup = self.registry["setup_args"]
        fields = self.registry["field_registries"]
        q = AnnData(X=X, obs=pd.DataFrame(index=adata.obs_names.astype(str)))
        q.var_names = self.genes.astype(str)
        if setup.get("layer"):
            q.layers[setup["layer"]] = X
        if setup.get("batch_key"):
            cats = list(fields["batch"]["state_registry"]["categorical_mapping"])
            batch = cats[0] if self.batch is None else self.batch
            if batch not in cats:
                raise ScResidualError(
                    f"batch {batch!r} is not a batch of the scvi model; choose one of {cats}."
                )
            q.obs[setup["batch_key"]] = pd.Categorical([batch] * q.n_obs, categories=cats)
        if setup.get("labels_key"):
            state = fields["labels"]["state_registry"]
            unlabeled = state.get("unlabeled_category", state["categorical_mapping"][0])
            q.obs[setup["labels_key"]] = pd.Categorical(
                [unlabeled] * q.n_obs, categories=list(state["categorical_mapping"])
            )
        for key in setup.get("categorical_covariate_keys") or []:
            mapping = fields["extra_categorical_covs"]["state_registry"]["mappings"][key]
            q.obs[key] = pd.Categorical([mapping[0]] * q.n_obs, categories=list(mapping))
        for key in setup.get("continuous_covariate_keys") or []:
            q.obs[key] = 0.0
        return q

    @property
    def n_latent(self) -> int:
        return self._n_latent

    def embed(self, adata: AnnData, *, batch_size: int = 1024, progress: bool = True) -> np.ndarray:
        """Posterior mean of the latent variable for every cell (the model is never trained)."""
        from scvi.model.base import _save_load

        from .._logging import quiet_loggers
        from .._safe_load import data_only_torch_load
        from ..train import quiet_lightning

        q = self._query(adata)
        # scvi-tools logs "File … already downloaded" for every local load: not news here.
        # Its loader unpickles model.pt in full: make it build data only, as load() did.
        safe = data_only_torch_load(_save_load, trust_pickle=self.trust_pickle, fix=FIX)
        with quiet_lightning(), quiet_loggers("scvi"), safe:
            model = self.model_cls.load(str(self.model_dir), adata=q, accelerator="cpu")
            model.module.eval()
            for p in model.module.parameters():
                p.requires_grad_(False)
            Z = model.get_latent_representation(q, batch_size=batch_size)
        self._n_latent = Z.shape[1]
        return np.asarray(Z, dtype=np.float32)


def pretrain_scvi(
    adata: AnnData,
    model_dir: str | Path,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    n_latent: int = 10,
    max_epochs: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> ScviSource:
    """Train an SCVI model on a reference (no labels, no coordinates), save it, load it frozen.

    This is how the demo and the benchmarks make a source; labs usually bring their own.
    The save is atomic.
    """
    import scvi

    from .._io import atomic_path
    from .._validate import check_counts
    from ..train import quiet_lightning

    check_counts(adata, layer=layer)
    ref = AnnData(
        X=adata.layers[layer] if layer else adata.X,
        obs=adata.obs[[batch_key]] if batch_key else None,
    )
    ref.obs_names, ref.var_names = adata.obs_names, adata.var_names
    with quiet_lightning():
        scvi.settings.seed = seed  # Lightning's seed_everything, which logs "Seed set to …"
        scvi.model.SCVI.setup_anndata(ref, batch_key=batch_key)
        model = scvi.model.SCVI(ref, n_latent=n_latent)
        model.train(
            max_epochs=max_epochs, accelerator="cpu", enable_progress_bar=progress,
            early_stopping=True, batch_size=256,
        )
    # Replaces an earlier scvi model folder (model.pt), never any other folder.
    with atomic_path(model_dir, replace_dir=lambda p: (p / "model.pt").is_file()) as tmp:
        model.save(str(tmp), overwrite=True)
    return ScviSource.load(model_dir)
