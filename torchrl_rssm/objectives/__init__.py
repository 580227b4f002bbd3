"""Losses: the PlaNet world-model loss (ELBO with free nats, KL balancing, latent overshooting) and
Dreamer's actor and value losses (lambda-returns on imagined trajectories)."""
from .dreamer import DreamerActorLoss, DreamerValueLoss, lambda_return
from .elbo import NonFiniteInputError, RSSMLoss, balanced_kl, gaussian_entropy, gaussian_kl, overshooting_priors

__all__ = ["DreamerActorLoss", "DreamerValueLoss", "NonFiniteInputError", "RSSMLoss", "balanced_kl",
           "gaussian_entropy", "gaussian_kl", "lambda_return", "overshooting_priors"]
