"""GLANN: a GLO generator with one learned code per training image, then an IMLE code mapper."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from genlit.errors import GenlitError
from genlit.losses import laplacian_l1_loss
from genlit.models.base import GenerativeModel
from genlit.models.optimizers import build_optimizer

Reconstruction = Literal["laplacian", "l1", "mse", "perceptual"]


def on_sphere(z: Tensor) -> Tensor:
    """``z`` projected onto the unit sphere, row by row: where GLO's codes live. The norm is a
    constant to the gradient (as the official generator's input), so a code already on the
    sphere gets the gradient it would get unprojected."""
    return z / z.norm(dim=1, keepdim=True).detach().clamp_min(1e-12)


class GLANN(GenerativeModel):
    """Generative Latent Nearest Neighbours (Hoshen, Li and Malik, CVPR 2019).

    Two stages in one fit, split by epoch:

    1. **GLO** (Bojanowski et al., 2018), for the first ``glo_epochs`` epochs: the generator and
       one learnable code per training image (on the unit sphere, re-projected after every
       update, or every epoch) minimise the reconstruction distance between ``G(z_i / ||z_i||)``
       and image ``x_i``.
    2. **IMLE** (Li and Malik, 2018), every later epoch: at the epoch's start ``2 N`` Gaussian
       noise vectors are mapped by the mapper ``T`` and each of the ``N`` codes takes its nearest
       mapped vector; the epoch's steps then pull ``T(e)`` towards its code (squared error).
       The generator and the codes stay fixed.

    Sampling is ``G(T(e) / ||T(e)||)``, ``e ~ N(0, I)``: the generator only ever saw codes on the
    unit sphere, and ``T(e)`` regresses onto them with a shorter mean (IMLE averages its
    targets), so every code that enters the generator is projected onto the sphere first, as
    the official code does. Before IMLE has run, samples are ``G`` of a Gaussian fitted to the
    codes (what the GLO paper samples), projected alike. The stage's budget is the trainer's:
    ``max_epochs`` must exceed ``glo_epochs``; IMLE epochs train only the small mapper, so give
    it several (the FID table gives 10 after the GLO epochs). The codes need each image's position in the training set: set
    ``data.init_args.indices: true`` (genlit's image datamodules; a datamodule of your own
    gives ``(images, labels, positions)`` batches and an ``index_count``).

    The paper's distance is a VGG perceptual loss, whose ImageNet weights genlit cannot
    download; ``reconstruction: laplacian`` (the default) is the GLO paper's weight-free
    Laplacian-pyramid L1, and ``perceptual`` loads VGG16 from ``vgg_weights`` (or torchvision's
    cache) and fails in one line where the file is missing. Defaults follow the official code:
    Adam(1e-3, betas 0.5/0.999) for the generator and 10x the rate for the codes. The official
    code's other choices (mapper batch norm, mean IMLE loss, halved rates, fresh optimizers
    each epoch, small initial codes projected once per epoch) are options, off by default: none
    measured better on the digits or MNIST (the README's GLANN section).

    Args:
        generator: Maps ``(B, latent_dim)`` codes to images in [-1, 1]; exposes ``latent_dim``.
        mapper: Maps ``(B, noise_dim)`` noise to codes; exposes ``noise_dim`` (e.g.
            :class:`genlit.networks.glann.CodeMapper`).
        generator_optimizer: Optimizer factory of the GLO stage (generator and codes).
        mapper_optimizer: Optimizer factory of the IMLE stage.
        codes_lr: Learning rate of the codes' parameter group (the generator's is the factory's).
        glo_epochs: Epochs of the GLO stage; IMLE trains in every epoch after.
        num_codes: Codes to learn; None: the datamodule's ``index_count`` (every image of the
            training source, validation images included, which are never trained).
        reconstruction: The GLO distance: ``laplacian`` (4-level Laplacian-pyramid L1), ``l1``,
            ``mse`` or ``perceptual`` (VGG16 features plus pixel L1).
        vgg_weights: The VGG16 state dict for ``perceptual``; None: torchvision's cache.
        imle_candidates: Mapped noise vectors per code drawn at each IMLE epoch (the paper's 2).
        imle_loss: How IMLE's squared error ``||T(e_i) - z_i||^2`` is reduced: ``mean`` over the
            batch and the code's entries (the official ``nn.MSELoss``), or ``sum`` over the
            entries and mean over the batch.
        lr_halving_epochs: Halve each stage's learning rates every this many epochs of that
            stage (the official code: 20 for GLO, 50 for IMLE); None: constant rates.
        fresh_optimizers: Clear the optimizers' state (Adam's moments) at the start of every
            epoch, as the official code, which makes new optimizers each epoch; False: the
            state carries over from epoch to epoch.
        codes_init_std: None: the codes start on the unit sphere. A number: they start as
            Gaussian draws of that standard deviation (the official 0.01), which the
            generator sees projected; short codes take larger turns per Adam step (whose step
            size does not scale with the code) until they are projected.
        codes_projection: When the codes are put back on the sphere during GLO: after every
            ``step``, or at the end of every ``epoch`` (the official code).
    """

    networks: ClassVar[tuple[str, ...]] = ("generator", "mapper")

    def __init__(
        self,
        generator: nn.Module,
        mapper: nn.Module,
        generator_optimizer: OptimizerCallable | None = None,
        mapper_optimizer: OptimizerCallable | None = None,
        codes_lr: float = 1e-2,
        glo_epochs: int = 25,
        num_codes: int | None = None,
        reconstruction: Reconstruction = "laplacian",
        vgg_weights: str | None = None,
        imle_candidates: int = 2,
        imle_loss: Literal["mean", "sum"] = "sum",
        lr_halving_epochs: int | None = None,
        fresh_optimizers: bool = False,
        codes_init_std: float | None = None,
        codes_projection: Literal["step", "epoch"] = "step",
    ) -> None:
        super().__init__()
        for name in ("latent_dim",):
            if not hasattr(generator, name):
                raise ValueError(f"GLANN's generator ({type(generator).__name__}) must expose `latent_dim`")
        if not hasattr(mapper, "noise_dim"):
            raise ValueError(f"GLANN's mapper ({type(mapper).__name__}) must expose `noise_dim` (its input size)")
        if getattr(mapper, "latent_dim", generator.latent_dim) != generator.latent_dim:
            raise ValueError(
                f"GLANN's mapper gives codes of size {mapper.latent_dim} but the generator takes "
                f"{generator.latent_dim}: set the mapper's latent_dim to {generator.latent_dim}"
            )
        if glo_epochs < 1:
            raise ValueError(f"glo_epochs must be >= 1, got {glo_epochs}")
        if codes_lr <= 0:
            raise ValueError(f"codes_lr must be > 0, got {codes_lr}")
        if imle_candidates < 1:
            raise ValueError(f"imle_candidates must be >= 1, got {imle_candidates}")
        if num_codes is not None and num_codes < 1:
            raise ValueError(f"num_codes must be >= 1, got {num_codes}")
        if codes_init_std is not None and codes_init_std <= 0:
            raise ValueError(f"codes_init_std must be > 0 or None, got {codes_init_std}")
        if lr_halving_epochs is not None and lr_halving_epochs < 1:
            raise ValueError(f"lr_halving_epochs must be >= 1 or None, got {lr_halving_epochs}")
        self.automatic_optimization = False
        self.ddp_find_unused_parameters = True  # each stage trains one network
        self.generator = generator
        self.mapper = mapper
        self.generator_optimizer = generator_optimizer or torch.optim.Adam
        self.mapper_optimizer = mapper_optimizer or torch.optim.Adam
        self.codes_lr = codes_lr
        self.glo_epochs = glo_epochs
        self.reconstruction = reconstruction
        self.imle_candidates = imle_candidates
        self.imle_loss = imle_loss
        self.lr_halving_epochs = lr_halving_epochs
        self.fresh_optimizers = fresh_optimizers
        self.codes_init_std = codes_init_std
        self.codes_projection = codes_projection
        self.codes: nn.Embedding | None = None
        if num_codes is not None:
            self._make_codes(num_codes)
        self._perceptual: list[nn.Module] = []  # kept out of the state dict: weights not ours
        if reconstruction == "perceptual":
            from genlit.networks.glann import VGGPerceptualDistance

            self._perceptual.append(VGGPerceptualDistance(vgg_weights))
        # The IMLE assignment of the current epoch: each code's noise vector, and that epoch.
        self.register_buffer("imle_noise", torch.zeros(0, int(mapper.noise_dim)))
        self.register_buffer("imle_epoch", torch.tensor(-1))
        # IMLE's noise comes from its own stream, seeded once from the global one: every DDP rank
        # draws the same candidates, and a resumed run the same as an uninterrupted one.
        self.register_buffer("imle_seed", torch.randint(2**62, ()))
        # The epoch whose start last set the learning rates and cleared the optimizers' state: a
        # run resumed mid-epoch keeps the state its checkpoint holds.
        self.register_buffer("optimizer_epoch", torch.tensor(-1))

    # --- the interface -------------------------------------------------------------------

    @property
    def latent_dim(self) -> int:  # type: ignore[override]
        return int(self.generator.latent_dim)

    @property
    def noise_dim(self) -> int:
        """Size of the mapper's Gaussian input."""
        return int(self.mapper.noise_dim)

    @property
    def mapper_trained(self) -> bool:
        """Whether an IMLE epoch has begun: ``sample`` then goes through the mapper."""
        return int(self.imle_epoch) >= 0

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Draws ``n`` images ``G(T(e) / ||T(e)||)``; before the IMLE stage, ``G`` of the codes'
        Gaussian, projected onto the sphere."""
        networks = (self.generator, self.mapper)
        modes = [net.training for net in networks]
        for net in networks:
            net.eval()
        try:
            return self.generator(self.sample_codes(n))
        finally:
            for net, mode in zip(networks, modes, strict=True):
                net.train(mode)

    def copying_members(self) -> Tensor | None:
        """The training positions GLANN holds a code for (every image of the training split),
        for the member test of :mod:`genlit.metrics.copying`; ``None`` before the codes exist."""
        if self.codes is None:
            return None
        return torch.arange(self.codes.num_embeddings)

    def sample_codes(self, n: int) -> Tensor:
        """``n`` new codes on the unit sphere, shape (n, latent_dim): ``T(e)`` once IMLE has run,
        else draws of a Gaussian fitted to the codes, each projected onto the sphere."""
        if self.mapper_trained or self.codes is None:
            return on_sphere(self.mapper(torch.randn(n, self.noise_dim, device=self.device)))
        codes = self.codes.weight.detach().float()
        mean = codes.mean(0)
        cov = torch.cov(codes.T) + 1e-6 * torch.eye(codes.shape[1], device=codes.device)
        drawn = torch.distributions.MultivariateNormal(mean, cov).sample((n,))
        return on_sphere(drawn).to(codes.dtype)

    @torch.no_grad()
    def decode_codes(self, positions: Tensor) -> Tensor:
        """``G(z_i)``, the GLO reconstruction of the training images at ``positions``. (GLANN has
        no encoder: it reconstructs only the images it learned a code for.)"""
        return self.generator(on_sphere(self.codes(positions)))

    # --- the codes -----------------------------------------------------------------------

    def _make_codes(self, n: int) -> None:
        self.codes = nn.Embedding(n, self.latent_dim)
        nn.init.normal_(self.codes.weight, std=self.codes_init_std or 1.0)
        if self.codes_init_std is None:
            self.project_codes()

    @torch.no_grad()
    def project_codes(self) -> None:
        """Puts every code back on the unit sphere."""
        weight = self.codes.weight
        weight.div_(weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        trainer = self.attached_trainer
        if stage != "fit" or trainer is None:
            return
        datamodule = trainer.datamodule
        if getattr(datamodule, "indices", True) is False:
            raise GenlitError(
                f"GLANN learns one code per training image and needs each image's position: set "
                f"data.init_args.indices: true ({type(datamodule).__name__} gives none now)"
            )
        count = getattr(datamodule, "index_count", None)
        if self.codes is None:
            if count is None:
                raise GenlitError(
                    "GLANN cannot tell how many codes to learn: set model.init_args.num_codes, "
                    "or give the datamodule an index_count (the number of training images)"
                )
            self._make_codes(int(count))
            self.codes.to(self.device)
        elif count is not None and count > self.codes.num_embeddings:
            raise GenlitError(
                f"GLANN has {self.codes.num_embeddings:,} codes but {type(datamodule).__name__} numbers "
                f"{count:,} images: set model.init_args.num_codes to {count} (or null)"
            )
        max_epochs = trainer.max_epochs
        if trainer.max_steps in (-1, None) and max_epochs not in (None, -1) and max_epochs <= self.glo_epochs:
            raise GenlitError(
                f"GLANN: trainer.max_epochs={max_epochs} ends inside the GLO stage (glo_epochs="
                f"{self.glo_epochs}), so the mapper would never train: set trainer.max_epochs above "
                f"{self.glo_epochs} (e.g. {2 * self.glo_epochs}) or lower model.init_args.glo_epochs"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # Codes sized by the datamodule exist only once a fit set them up: make them from the
        # file (its state dict loads right after this hook), so sampling needs no data.
        weight = checkpoint.get("state_dict", {}).get("codes.weight")
        if weight is not None and (self.codes is None or self.codes.weight.shape != weight.shape):
            self.codes = nn.Embedding(*weight.shape).to(self.device)
        noise = checkpoint.get("state_dict", {}).get("imle_noise")
        if noise is not None:
            self.imle_noise = torch.zeros_like(noise, device=self.device)

    # --- optimizers and the steps --------------------------------------------------------

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        if self.codes is None:
            raise GenlitError("GLANN has no codes yet: train it with a datamodule (its setup makes them)")
        groups = [{"params": list(self.generator.parameters())},
                  {"params": list(self.codes.parameters()), "lr": self.codes_lr}]
        return [
            build_optimizer(self.generator_optimizer, groups, "generator_optimizer"),
            build_optimizer(self.mapper_optimizer, self.mapper.parameters(), "mapper_optimizer"),
        ]

    def in_glo_stage(self) -> bool:
        """Whether the current epoch belongs to the GLO stage."""
        return self.current_epoch < self.glo_epochs

    def distance(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """The GLO reconstruction distance per image, shape (B,)."""
        if self.reconstruction == "laplacian":
            return laplacian_l1_loss(x_hat, x)
        if self.reconstruction == "l1":
            return (x_hat - x).abs().flatten(1).mean(1)
        if self.reconstruction == "mse":
            return (x_hat - x).pow(2).flatten(1).mean(1)
        perceptual = self._perceptual[0].to(x.device)
        return perceptual(x_hat, x)

    @staticmethod
    def positions(batch: Any) -> Tensor:
        """The images' positions: the third element of an ``(images, labels, positions)`` batch."""
        if isinstance(batch, (tuple, list)) and len(batch) >= 3:
            return batch[2]
        if isinstance(batch, dict) and "index" in batch:
            return batch["index"]
        raise GenlitError(
            "GLANN's batches carry no image positions: set data.init_args.indices: true "
            "(a datamodule of your own: give (images, labels, positions) batches)"
        )

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, positions = self.unpack(batch), self.positions(batch)
        opt_glo, opt_imle = self.optimizers()
        if self.in_glo_stage():
            out = self.run_phase("loss", opt_glo, [self.generator, self.codes],
                                 lambda: self.glo_step(x, positions), "grad_norm_g")
            if self.codes_projection == "step":
                self.project_codes()
            stage = "glo"
        else:
            out = self.run_phase("imle_loss", opt_imle, self.mapper,
                                 lambda: self.imle_step(positions), "grad_norm_mapper")
            stage = "imle"
        if self.logs_this_step():
            shown = {f"train/{stage}_loss": out.pop("loss").detach()}
            self.log_dict(shown, on_step=True, on_epoch=False, prog_bar=True)
            if out:
                self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, on_step=True, on_epoch=False)

    def glo_step(self, x: Tensor, positions: Tensor) -> dict[str, Tensor]:
        """The GLO loss of one batch: ``distance(G(z_i / ||z_i||), x_i)`` averaged."""
        return {"loss": self.distance(self.generator(on_sphere(self.codes(positions))), x).mean()}

    def imle_step(self, positions: Tensor) -> dict[str, Tensor]:
        """The IMLE loss of one batch of codes: ``||T(e_i) - z_i||^2`` averaged over the batch,
        ``e_i`` the noise vector assigned to code ``i`` at the epoch's start."""
        target = self.codes(positions).detach()
        mapped = self.mapper(self.imle_noise.index_select(0, positions))
        error = (mapped - target).pow(2)  # (B, latent_dim)
        return {"loss": error.mean() if self.imle_loss == "mean" else error.sum(1).mean()}

    def on_train_epoch_start(self) -> None:
        if int(self.optimizer_epoch) != self.current_epoch:
            self.start_stage_epoch()
        if self.in_glo_stage() or int(self.imle_epoch) == self.current_epoch:
            return  # a run resumed mid-epoch keeps the assignment its checkpoint holds
        self.imle_noise, distance = self.assign_noise()
        self.imle_epoch.fill_(self.current_epoch)
        self.log("train/imle_nn_distance", distance, on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        if self.in_glo_stage() and self.codes_projection == "epoch":
            self.project_codes()

    def start_stage_epoch(self) -> None:
        """Sets the current stage's learning rates for its epoch (halved every
        ``lr_halving_epochs`` epochs of the stage) and, with ``fresh_optimizers``, clears the
        stage optimizer's state."""
        opt_glo, opt_imle = (opt.optimizer for opt in self.optimizers())
        optimizer, stage_epoch = ((opt_glo, self.current_epoch) if self.in_glo_stage()
                                  else (opt_imle, self.current_epoch - self.glo_epochs))
        halvings = 0 if self.lr_halving_epochs is None else stage_epoch // self.lr_halving_epochs
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * 0.5**halvings
        if self.fresh_optimizers:
            optimizer.state.clear()
        self.optimizer_epoch.fill_(self.current_epoch)

    @torch.no_grad()
    def assign_noise(self, chunk: int = 4096) -> tuple[Tensor, Tensor]:
        """IMLE's matching: ``imle_candidates * N`` noise vectors mapped by ``T``; each code
        takes the noise of its nearest mapped vector.

        Returns:
            ``(noise, distance)``: the noise of each code ``(N, noise_dim)``, and the mean
            distance from each code to its nearest mapped vector (what IMLE lowers).
        """
        codes = self.codes.weight.detach()
        n = codes.shape[0]
        stream = torch.Generator(device=codes.device).manual_seed(int(self.imle_seed) + self.current_epoch)
        noise = torch.randn(self.imle_candidates * n, self.noise_dim, device=codes.device, generator=stream)
        was_training = self.mapper.training
        self.mapper.eval()
        mapped = torch.cat([self.mapper(part) for part in noise.split(chunk)])
        self.mapper.train(was_training)
        best = torch.empty(n, dtype=torch.long, device=codes.device)
        nearest = torch.empty(n, device=codes.device)
        for start in range(0, n, chunk):
            distances = torch.cdist(codes[start:start + chunk].float(), mapped.float())
            nearest[start:start + chunk], best[start:start + chunk] = distances.min(1)
        return noise[best], nearest.mean()
