"""Losses: the PlaNet world-model loss (ELBO with free nats, KL balancing, latent overshooting),
Dreamer's actor and value losses (lambda-returns on imagined trajectories) and DreamerV3's
(categorical KL, two-hot reward and critic, return normalisation, slow critic)."""
from .dreamer import DreamerActorLoss, DreamerValueLoss, lambda_return
from .dreamer_v3 import (
    DreamerV3ActorLoss,
    DreamerV3Loss,
    DreamerV3ModelLoss,
    DreamerV3ValueLoss,
    categorical_kl_balanced,
    categorical_kl_terms,
    symexp,
    symlog,
    two_hot_cross_entropy,
    two_hot_decode,
    two_hot_encode,
)
from .elbo import (
    NonFiniteInputError,
    RSSMLoss,
    balanced_kl,
    gaussian_entropy,
    gaussian_kl,
    overshooting_priors,
)

__all__ = ["DreamerActorLoss", "DreamerV3ActorLoss", "DreamerV3Loss", "DreamerV3ModelLoss", "DreamerV3ValueLoss",
           "DreamerValueLoss", "NonFiniteInputError", "RSSMLoss", "balanced_kl", "categorical_kl_balanced",
           "categorical_kl_terms", "gaussian_entropy", "gaussian_kl", "lambda_return", "overshooting_priors",
           "symexp", "symlog", "two_hot_cross_entropy", "two_hot_decode", "two_hot_encode"]
