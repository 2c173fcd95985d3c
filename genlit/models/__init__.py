"""LightningModules: the generative models genlit trains."""

from genlit.models.ae import AE
from genlit.models.aeot import AEOT
from genlit.models.aeot_gan import AEOTGAN
from genlit.models.base import AdversarialModel, GenerativeModel
from genlit.models.began import BEGAN
from genlit.models.gan import GAN
from genlit.models.glann import GLANN
from genlit.models.vae import VAE
from genlit.models.wae import WAE
from genlit.models.wgan import WGAN, WGANGP

__all__ = ["GenerativeModel", "AdversarialModel", "GAN", "WGAN", "WGANGP", "BEGAN"]
__all__ += ["AE", "AEOT", "AEOTGAN", "GLANN", "VAE", "WAE"]
