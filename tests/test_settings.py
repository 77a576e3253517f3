"""``sr.settings``: validated package-wide defaults read where the value is used."""

import logging

import numpy as np
import pytest
import torch
from anndata import AnnData

import scresidual as sr
from scresidual import ScResidualError
from scresidual._logging import tqdm
from scresidual._settings import progress_enabled
from scresidual.model import ResidualModel
from scresidual.sources import TorchSource, embed


@pytest.fixture(autouse=True)
def _restore_settings():
    s = sr.settings
    saved = (s._progress_bar, s._seed, s._n_jobs)
    level = logging.getLogger("scresidual").level
    yield
    s._progress_bar, s._seed, s._n_jobs = saved
    logging.getLogger("scresidual").setLevel(level)


def test_defaults():
    assert (sr.settings.progress_bar, sr.settings.seed, sr.settings.n_jobs) == (True, 0, None)
    assert "progress_bar=True" in repr(sr.settings)


def _embed_quietly_or_not(capsys, **kwargs) -> str:
    a = AnnData(np.ones((30, 4), np.float32))
    source = TorchSource(torch.nn.Identity(), n_latent=4, name="identity")
    embed(a, source, batch_size=8, **kwargs)
    return capsys.readouterr().err


def test_progress_bar_setting_silences_the_bars(capsys):
    assert "identity" in _embed_quietly_or_not(capsys)  # the bar, on stderr
    sr.settings.progress_bar = False
    assert _embed_quietly_or_not(capsys) == ""
    assert "identity" in _embed_quietly_or_not(capsys, progress=True)  # an explicit value wins
    list(tqdm(range(3), desc="loop"))
    assert capsys.readouterr().err == ""


def test_progress_enabled_reads_the_setting_when_called():
    assert progress_enabled(None) and not progress_enabled(False)
    sr.settings.progress_bar = False
    assert not progress_enabled(None) and progress_enabled(True)


@pytest.mark.parametrize(
    "value, level",
    [
        (0, logging.ERROR),
        (1, logging.WARNING),
        (2, logging.INFO),
        (3, logging.DEBUG),
        ("info", logging.INFO),
        ("DEBUG", logging.DEBUG),
    ],
)
def test_verbosity_sets_the_package_logger_level(value, level):
    sr.settings.verbosity = value
    assert logging.getLogger("scresidual").level == level
    assert logging.getLogger("scresidual.pp._graph").getEffectiveLevel() == level
    assert sr.settings.verbosity == (
        value if isinstance(value, int) else {"info": 2, "DEBUG": 3}[value]
    )


def test_verbosity_decides_which_messages_are_logged(caplog):
    log = logging.getLogger("scresidual.some_module")
    sr.settings.verbosity = "warning"
    with caplog.at_level(logging.NOTSET):  # a handler that takes everything it is given
        log.info("hidden")
        sr.settings.verbosity = "info"
        log.info("shown")
    assert [r.getMessage() for r in caplog.records] == ["shown"]


@pytest.mark.parametrize(
    "name, value",
    [
        ("verbosity", 4),
        ("verbosity", "loud"),
        ("verbosity", True),
        ("progress_bar", "yes"),
        ("progress_bar", 1),
        ("seed", -1),
        ("seed", 1.5),
        ("seed", True),
        ("n_jobs", 0),
        ("n_jobs", "all"),
    ],
)
def test_invalid_values_give_a_one_line_error(name, value):
    before = getattr(sr.settings, name)
    with pytest.raises(ScResidualError, match=f"settings.{name} must be") as err:
        setattr(sr.settings, name, value)
    assert "\n" not in str(err.value)
    assert getattr(sr.settings, name) == before


def test_seed_and_n_jobs_defaults_come_from_the_settings():
    from scresidual.model._gradient import n_jobs

    sr.settings.seed, sr.settings.n_jobs = 7, 1
    model = ResidualModel(arm="scratch", accelerator="cpu", n_jobs=None)
    assert model.config.seed == 7  # resolved when the model is made, then saved with it
    assert n_jobs(model.config, model.trainer_kwargs, 5) == 1
    other = ResidualModel(seed=3, accelerator="cpu", n_jobs=2)
    assert n_jobs(other.config, other.trainer_kwargs, 5) == 2
    sr.settings.seed = 0
    assert model.config.seed == 7
