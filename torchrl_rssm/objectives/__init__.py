"""Losses: the PlaNet world-model loss (ELBO with free nats, KL balancing, latent overshooting)."""
from .elbo import NonFiniteInputError, RSSMLoss, balanced_kl, gaussian_entropy, gaussian_kl, overshooting_priors

__all__ = ["NonFiniteInputError", "RSSMLoss", "balanced_kl", "gaussian_entropy", "gaussian_kl", "overshooting_priors"]
