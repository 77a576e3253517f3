"""Frozen scvi-tools models (``save()`` directories and scvi-hub folders) as sources."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._errors import ScResidualError, first_line
from .._genes import MIN_GENE_OVERLAP, expression_matrix
from ._base import FrozenSource

logger = logging.getLogger(__name__)

SCVI_PATIENCE = 10
"""Epochs without a better validation ELBO after which ``pretrain_scvi`` stops."""

FIX = "re-save the model with scvi-tools >= 1.0 or download it again"


def _read_saved(model_dir: Path, trust_pickle: bool) -> dict:
    """``model.pt`` read as data (nothing in the file is run): attributes, genes, weights.

    scvi-tools' own readers (``load``, ``load_registry``, ``prepare_query_anndata`` given a
    folder) unpickle the file in full, which can run code stored in it: they are never given
    the folder, only the model built here from the data read.
    """
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
    if not isinstance(saved.get("model_state_dict"), dict) or saved.get("var_names") is None:
        raise ScResidualError(f"{path} lacks the weights or the genes of the model; {FIX}.")
    return saved


def _query_covariates(registry: dict, batch) -> dict[str, object]:
    """The value every query cell gets in each ``obs`` column the model was set up with.

    The reference batch ``batch`` (default: the first), the unlabelled category, the first
    category of each categorical covariate and 0 for continuous ones: values the encoder was
    trained on, so scvi-tools transfers the setup without new categories or weights.
    """
    setup, fields = registry["setup_args"], registry["field_registries"]
    values: dict[str, object] = {}
    if setup.get("batch_key"):
        cats = list(fields["batch"]["state_registry"]["categorical_mapping"])
        batch = cats[0] if batch is None else batch
        if batch not in cats:
            raise ScResidualError(
                f"batch {batch!r} is not a batch of the scvi model; choose one of {cats}."
            )
        values[setup["batch_key"]] = batch
    if setup.get("labels_key"):
        state = fields["labels"]["state_registry"]
        values[setup["labels_key"]] = state.get(
            "unlabeled_category", state["categorical_mapping"][0]
        )
    for key in setup.get("categorical_covariate_keys") or []:
        values[key] = fields["extra_categorical_covs"]["state_registry"]["mappings"][key][0]
    for key in setup.get("continuous_covariate_keys") or []:
        values[key] = 0.0
    return values


class ScviSource(FrozenSource):
    """A pretrained scvi-tools model (SCVI, SCANVI, …) used frozen for its latent space.

    The model is built once, at :meth:`load`, with scvi-tools' own constructor from the
    attributes read safely from ``model.pt``. A query is prepared with scvi-tools'
    ``prepare_query_anndata`` (genes re-ordered to the model's, missing genes zero-filled;
    an error below ``min_overlap``), its setup transferred from the model's registry, and its
    latent space read with the model's ``get_latent_representation``. Query cells are
    assigned the reference batch ``batch`` (default: the first), so the encoder sees a batch
    it was trained on and no new weights are created.
    """

    name = "scvi-tools model"

    def __init__(
        self,
        model,
        model_dir: Path,
        *,
        layer: str | None,
        min_overlap: float,
        covariates: dict[str, object],
    ):
        self.model, self.model_dir = model, model_dir
        self.layer, self.min_overlap, self.covariates = layer, min_overlap, covariates
        self.genes = np.asarray(model.get_var_names(), dtype=str)

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

        from .._logging import quiet_loggers

        model_dir = Path(model_dir)
        saved = _read_saved(model_dir, trust_pickle)
        attrs = saved["attr_dict"]
        registry = attrs["registry_"]
        name = registry.get("model_name", "SCVI")
        model_cls = getattr(scvi.model, str(name), None)
        if model_cls is None or not hasattr(model_cls, "prepare_query_anndata"):
            raise ScResidualError(
                f"{model_dir} holds an {name} model, which this version of scvi-tools cannot "
                "map queries with; use an SCVI or SCANVI model, or upgrade scvi-tools."
            )
        genes = pd.Index(np.asarray(saved["var_names"], dtype=str))
        try:
            covariates = _query_covariates(registry, batch)
            params = attrs["init_params_"]
            kwargs = {k: v for group in params["kwargs"].values() for k, v in group.items()}
            args = {
                k: v
                for k, v in params["non_kwargs"].items()
                # arguments of old SCANVI saves that its constructor no longer takes
                if k not in ("unlabeled_category", "pretrained_model")
            }
            # A tiny AnnData set up from the saved registry becomes the model's own data, so
            # every query is transferred from it and none stays attached to the model (two
            # cells: scvi-tools' library-size initialisation fails on one).
            template = AnnData(
                sp.csr_matrix(np.ones((2, len(genes)), dtype=np.float32)),
                obs=pd.DataFrame(covariates, index=["cell0", "cell1"]),
                var=pd.DataFrame(index=genes),
            )
            if registry["setup_args"].get("layer"):
                template.layers[registry["setup_args"]["layer"]] = template.X
            with quiet_loggers("scvi"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scvi-tools' notes on the made-up template
                model_cls.setup_anndata(
                    template, source_registry=registry, **registry["setup_args"]
                )
                model = model_cls(template, **args, **kwargs)
            state = dict(saved["model_state_dict"])
            state.pop("pyro_param_store", None)
            model.module.load_state_dict(state)
        except ScResidualError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
            detail = f"{type(err).__name__}: {first_line(err, 160)}"
            raise ScResidualError(
                f"{model_dir / 'model.pt'} does not describe a usable scvi-tools model "
                f"({detail}); {FIX}."
            ) from err
        model.module.eval()
        model.module.requires_grad_(False)
        model.is_trained_ = True
        return cls(model, model_dir, layer=layer, min_overlap=min_overlap, covariates=covariates)

    @property
    def n_latent(self) -> int:
        return int(self.model.module.n_latent)

    def _query(self, adata: AnnData) -> AnnData:
        """``adata``'s counts on the model's genes, set up like the model's data."""
        from .._genes import iter_row_blocks, match_genes
        from .._logging import quiet_loggers
        from .._validate import check_finite

        position, present = match_genes(
            adata,
            self.genes,
            min_overlap=self.min_overlap,
            model_name=f"scvi model in {self.model_dir}",
        )
        # Only the model's genes are copied (block by block, so a backed slide is read in
        # parts); prepare_query_anndata pads the missing ones and orders them.
        cols = position[present]
        X = sp.vstack(
            [block[:, cols] for _, block in iter_row_blocks(adata, layer=self.layer)]
            or [sp.csr_matrix((0, len(cols)), dtype=np.float32)],
            format="csr",
        )
        check_finite(X, "the query counts")
        if X.nnz and X.data.min() < 0:
            raise ScResidualError(
                "the query has negative values but the scvi model needs raw counts; pass layer= "
                "naming the counts layer."
            )
        q = AnnData(
            X,
            obs=pd.DataFrame(index=adata.obs_names.astype(str)),
            var=pd.DataFrame(index=self.genes[present]),
        )
        # Its overlap note and low-overlap warning: match_genes has logged the overlap.
        with quiet_loggers("scvi"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = type(self.model).prepare_query_anndata(q, self.model, inplace=False)
        q.obs = pd.DataFrame(self.covariates, index=q.obs_names)
        layer = self.model.registry["setup_args"].get("layer")
        if layer:
            q.layers[layer] = q.X
        return q

    def embed(
        self, adata: AnnData, *, batch_size: int = 1024, progress: bool | None = None
    ) -> np.ndarray:
        """Posterior mean of the latent variable for every cell (the model is never trained).

        ``progress`` is accepted like every source's (:class:`FrozenSource`); scvi-tools'
        inference shows no bar.
        """
        from scvi.dataloaders import AnnDataLoader

        from .._logging import quiet_loggers

        q = self._query(adata)
        with quiet_loggers("scvi"):
            # The setup is transferred to a manager of this query alone, not registered on
            # the model: nothing of one call's cells is kept for the next.
            manager = self.model.adata_manager.transfer_fields(q)
            loader = AnnDataLoader(manager, batch_size=batch_size, shuffle=False)
            Z = self.model.get_latent_representation(dataloader=loader)
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
    overwrite: bool = False,
    progress: bool | None = None,
) -> ScviSource:
    """Train an SCVI model on a reference (no labels, no coordinates), save it, load it frozen.

    This is how the demo and the benchmarks make a source; labs usually bring their own.
    Training stops early once the validation ELBO has not improved for
    10 epochs; the number of epochs run is logged (INFO). The save is atomic;
    an existing ``model_dir`` is replaced only with ``overwrite=True``, and only if it is an
    scvi-tools model folder.
    """
    import scvi

    from .._io import atomic_path
    from .._logging import quiet_lightning
    from .._settings import progress_enabled
    from .._validate import check_counts

    if Path(model_dir).exists() and not overwrite:
        raise ScResidualError(
            f"{model_dir} exists; pass overwrite=True to replace it or choose another folder."
        )
    X = expression_matrix(adata, layer)
    check_counts(X, f"layers[{layer!r}]" if layer else "adata.X")
    ref = AnnData(
        # scvi-tools warns about (and trains slower on) any other sparse format
        X=sp.csr_matrix(X) if sp.issparse(X) and X.format != "csr" else X,
        obs=adata.obs[[batch_key]] if batch_key else None,
    )
    ref.obs_names, ref.var_names = adata.obs_names, adata.var_names
    with quiet_lightning():
        scvi.settings.seed = seed  # Lightning's seed_everything, which logs "Seed set to …"
        scvi.model.SCVI.setup_anndata(ref, batch_key=batch_key)
        model = scvi.model.SCVI(ref, n_latent=n_latent)
        model.train(
            max_epochs=max_epochs,
            accelerator="cpu",
            early_stopping=True,
            early_stopping_patience=SCVI_PATIENCE,
            batch_size=256,
            enable_progress_bar=progress_enabled(progress),
        )
    epochs = len(model.history["elbo_train"])
    stopped = "early-stopped" if epochs < max_epochs else "max_epochs reached"
    logger.info("scVI trained for %d of %d epochs (%s)", epochs, max_epochs, stopped)
    # Replaces an earlier scvi model folder (model.pt), never any other folder.
    with atomic_path(model_dir, replace_dir=lambda p: (p / "model.pt").is_file()) as tmp:
        model.save(str(tmp), overwrite=True)
    return ScviSource.load(model_dir)
