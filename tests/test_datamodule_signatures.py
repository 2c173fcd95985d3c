"""Datamodule arguments: declared once, all in ``--data.help``, defaults and FID keys as before."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import warnings
from pathlib import Path

import docstring_parser
import lightning
import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer

import datamodules._image_base
import datamodules.images
import datamodules.toy
from datamodules.images import (
    CIFAR10,
    MNIST,
    CelebA,
    Digits,
    FashionMNIST,
    ImageDataModule,
    ImageFolder,
)
from datamodules.toy import GaussianGrid, GaussianRing, ParallelLines, SwissRoll, ToyDataModule
from genlit.cli import main
from genlit.metrics.fid import reference_key, reference_path

REPO = Path(__file__).resolve().parents[1]
IMAGE_MODULES = [MNIST, FashionMNIST, CIFAR10, CelebA, ImageFolder, Digits]
TOY_MODULES = [GaussianRing, GaussianGrid, SwissRoll, ParallelLines]
BASE_ARGUMENTS = [
    "root", "download", "image_size", "batch_size", "num_workers", "val_fraction", "seed",
    "in_memory",
]
# Base arguments a datamodule fixes in its super().__init__ call: not its arguments at all.
FIXED = {Digits: {"root", "download"}, ImageFolder: {"download"}}


def _datamodule_classes() -> list[type]:
    """Every datamodule class defined in datamodules/, private bases included."""
    found = {}
    for module in (datamodules._image_base, datamodules.images, datamodules.toy):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, LightningDataModule) and cls.__module__.startswith("datamodules"):
                found[cls.__qualname__] = cls
    return list(found.values())


def _declared(cls: type) -> list[str]:
    """The named arguments of the ``__init__`` that ``cls`` itself defines ([] if it inherits)."""
    if "__init__" not in cls.__dict__:
        return []
    params = list(inspect.signature(cls.__dict__["__init__"]).parameters.values())[1:]  # no self
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in params if p.kind not in variadic]


def _docs(cls: type) -> dict[str, str]:
    """Argument name -> its one Google-style description, from the class that declares it."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if _declared(klass):
            parsed = docstring_parser.parse(klass.__doc__ or "")
            docs.update({p.arg_name: p.description for p in parsed.params})
    return docs


def _help(capsys: pytest.CaptureFixture, name: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data.help", name])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def _entries(help_text: str) -> dict[str, str]:
    """``--data.<name>`` -> its help entry with whitespace collapsed (argparse wraps lines)."""
    body = help_text.split("Help for --data.help=", 1)[1]
    parts = re.split(r"^  --data\.(\w+)", body, flags=re.MULTILINE)
    return {name: " ".join(text.split()) for name, text in zip(parts[1::2], parts[2::2], strict=True)}


# --- declared once -----------------------------------------------------------------------------


def test_each_base_argument_is_declared_in_exactly_one_signature():
    classes = _datamodule_classes()
    assert {ImageDataModule, ToyDataModule, *IMAGE_MODULES, *TOY_MODULES} <= set(classes)
    for name in BASE_ARGUMENTS:
        declaring = [cls for cls in classes if issubclass(cls, ImageDataModule)
                     and name in _declared(cls)]
        assert declaring == [ImageDataModule], name


@pytest.mark.parametrize("family", [ImageDataModule, ToyDataModule])
def test_no_argument_is_declared_twice_in_a_family(family):
    # batch_size and seed exist in both families, each declared once by the family's base.
    owners: dict[str, list[str]] = {}
    for cls in _datamodule_classes():
        if issubclass(cls, family):
            for name in _declared(cls):
                owners.setdefault(name, []).append(cls.__qualname__)
    copies = {name: where for name, where in owners.items() if len(where) > 1}
    assert copies == {}
    assert len(owners) >= 4  # the signatures were read at all


# --- every argument in --data.help -------------------------------------------------------------


@pytest.mark.parametrize("cls", IMAGE_MODULES + TOY_MODULES, ids=lambda c: c.__name__)
def test_help_lists_every_argument_with_its_doc_type_and_default(capsys, cls):
    entries = _entries(_help(capsys, cls.__name__))
    docs = _docs(cls)
    defaults = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in klass.__dict__ and issubclass(klass, LightningDataModule):
            signature = inspect.signature(klass.__dict__["__init__"])
            defaults.update({p.name: p.default for p in signature.parameters.values()})
    expected = {name for klass in cls.__mro__ for name in _declared(klass)} - FIXED.get(cls, set())
    if issubclass(cls, ImageDataModule):
        assert set(BASE_ARGUMENTS) - FIXED.get(cls, set()) <= expected
    assert set(entries) == expected
    for name in expected:
        entry, doc = entries[name], " ".join(docs[name].split())
        assert doc and doc in entry, (name, entry)
        default = defaults[name]
        if default is inspect.Parameter.empty:
            assert "required" in entry, (name, entry)
        else:
            shown = "null" if default is None else str(default)
            assert f"default: {shown})" in entry, (name, entry)
        assert "type: " in entry, (name, entry)


def test_the_none_defaults_are_documented_with_the_values_they_take():
    docs = " ".join(_docs(ImageDataModule)["image_size"].split())
    for cls, name in [(MNIST, "MNIST"), (FashionMNIST, "Fashion-MNIST"), (CIFAR10, "CIFAR-10"),
                      (CelebA, "CelebA"), (ImageFolder, "ImageFolder"), (Digits, "Digits")]:
        assert re.search(rf"\b{cls.default_image_size} for [^:]*{name}", docs), (name, docs)


# --- None: the dataset's own default, resolved at construction ---------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "image_size", "in_memory"),
    [
        (MNIST, {}, 28, True),
        (FashionMNIST, {}, 28, True),
        (CIFAR10, {}, 32, True),
        (CelebA, {}, 64, False),
        (ImageFolder, {"root": "images"}, 64, False),
        (Digits, {}, 8, True),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_none_resolves_to_the_dataset_default(cls, kwargs, image_size, in_memory):
    for dm in (cls(**kwargs), cls(**kwargs, image_size=None, in_memory=None)):
        assert (dm.image_size, dm.in_memory) == (image_size, in_memory)
        assert dm.dims[1:] == (image_size, image_size)
        # The hparams say what was used, as the CLI logs and checkpoints them.
        assert (dm.hparams["image_size"], dm.hparams["in_memory"]) == (image_size, in_memory)
    dm = cls(**kwargs, image_size=12, in_memory=not in_memory)
    assert (dm.image_size, dm.in_memory) == (12, not in_memory)
    assert (dm.hparams["image_size"], dm.hparams["in_memory"]) == (12, not in_memory)


def test_root_none_is_data_except_for_image_folder_which_needs_one():
    assert MNIST().root == MNIST(root=None).root == MNIST().hparams["root"] == "data"
    assert CelebA(root="elsewhere").root == "elsewhere"
    with pytest.raises(ValueError, match="ImageFolder needs root"):
        ImageFolder()
    assert ImageFolder("folder").root == "folder"  # root stays the first positional argument
    assert Digits().root == "" and not Digits().download


def test_toy_std_none_is_the_distribution_default():
    assert (GaussianRing().std, GaussianGrid().std) == (0.02, 0.05)
    assert GaussianRing(std=0.5).std == 0.5
    with pytest.raises(ValueError, match="std > 0"):
        GaussianGrid(std=0.0)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [(MNIST, {}), (CelebA, {"image_size": 32}), (ImageFolder, {"root": "x", "channels": 1}),
     (Digits, {"val_fraction": 0.1})],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_checkpoint_hparams_rebuild_the_datamodule(tmp_path, cls, kwargs):
    # What the checkpoint connector stores; a fixed argument left in it would be passed twice.
    dm = cls(**kwargs)
    path = tmp_path / "dm.ckpt"
    checkpoint = {"pytorch-lightning_version": lightning.__version__}
    torch.save({**checkpoint, cls.CHECKPOINT_HYPER_PARAMS_KEY: dict(dm.hparams)}, path)
    rebuilt = cls.load_from_checkpoint(path)
    assert dict(rebuilt.hparams) == dict(dm.hparams)
    assert reference_key(rebuilt, "val", _Features()) == reference_key(dm, "val", _Features())


# --- FID cache keys pinned to their values before the arguments became None-able -----------------


class _Features:
    """Stands in for a feature network: reference_key reads its name and fingerprint only."""

    name = "stub.Features"

    def fingerprint(self) -> str:
        return "0" * 16


PINNED = {
    # (class, split) -> cache file name, computed with the code before this change (cwd "/").
    (MNIST, "train"): "MNIST-train-28px-Features-62a9e22c6d571d67.pt",
    (MNIST, "val"): "MNIST-val-28px-Features-22b08ad72051b429.pt",
    (MNIST, "test"): "MNIST-test-28px-Features-9786de803240b427.pt",
    (FashionMNIST, "train"): "FashionMNIST-train-28px-Features-ace4e0a632291040.pt",
    (CIFAR10, "train"): "CIFAR10-train-32px-Features-d8e239491149cae3.pt",
    (CelebA, "train"): "CelebA-train-64px-Features-fee28ba5ca7bc29e.pt",
    (Digits, "val"): "Digits-val-8px-Features-856004938895eb01.pt",
}


def test_fid_key_of_mnist_with_default_arguments_is_unchanged(monkeypatch):
    monkeypatch.chdir("/")  # the default root "data" resolves to /data
    key = reference_key(MNIST(), "train", _Features())
    assert key == {
        "version": 1,
        "dataset": "datamodules.images.MNIST",
        "data_args": {"channels": 1, "image_size": 28, "root": "/data", "seed": 0,
                      "val_fraction": 0.0},
        "split": "train",
        "image_shape": [1, 28, 28],
        "features": "stub.Features",
        "features_fingerprint": "0" * 16,
    }
    assert reference_path(key, "/cache").name == PINNED[MNIST, "train"]


@pytest.mark.parametrize(("cls", "split"), list(PINNED), ids=lambda v: getattr(v, "__name__", v))
def test_fid_cache_file_of_default_arguments_is_unchanged(monkeypatch, cls, split):
    monkeypatch.chdir("/")
    assert reference_path(reference_key(cls(), split, _Features()), "/c").name == PINNED[cls, split]


# --- importing changes nothing; the toy loader raises no warning -------------------------------


def test_importing_the_datamodules_installs_no_warning_filter():
    code = (
        "import warnings, torch, torchvision, lightning.pytorch, sklearn\n"
        "before = list(warnings.filters)\n"
        "import datamodules, datamodules.images, datamodules.toy\n"
        "assert warnings.filters == before, [f for f in warnings.filters if f not in before]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_toy_training_raises_no_iterable_dataset_warning(tmp_path):
    from genlit.models import GAN
    from genlit.networks.mlp import MLPDiscriminator, MLPGenerator

    model = GAN(generator=MLPGenerator(hidden_dim=8, num_layers=1),
                discriminator=MLPDiscriminator(hidden_dim=8, num_layers=1))
    trainer = Trainer(
        max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        accelerator="cpu",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, GaussianRing(batch_size=16, samples_per_epoch=48))
    assert trainer.num_training_batches == 3 and model.generator_updates == 3  # k = 1: one per batch
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "IterableDataset" in m or "__len__" in m], messages


def test_toy_epochs_are_fresh_seeded_and_leave_the_global_rng_alone():
    dm = SwissRoll(batch_size=8, samples_per_epoch=24, seed=5)
    state = torch.get_rng_state()
    loader = dm.train_dataloader()
    first, second = torch.stack(list(loader)), torch.stack(list(loader))  # (3, 8, 2) each
    assert len(loader) == 3 and first.shape == (3, 8, 2)
    assert not torch.equal(first, second)  # a new epoch draws new points
    again = SwissRoll(batch_size=8, samples_per_epoch=24, seed=5).train_dataloader()
    torch.testing.assert_close(torch.stack(list(again)), first, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), state)


def test_image_positions_do_not_change_the_fid_reference(monkeypatch):
    # indices: true (GLANN) adds positions to batches, not other images: the cached
    # statistics of the same split are shared.
    monkeypatch.chdir("/")
    assert reference_key(MNIST(indices=True), "train", _Features()) == reference_key(MNIST(), "train", _Features())
