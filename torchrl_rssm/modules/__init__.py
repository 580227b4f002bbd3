"""RSSM world-model modules (encoders, decoders, RSSM, heads, builder)."""
from .actor import DreamerActor, StraightThroughOneHotCategorical, make_dreamer_actor, make_value_model, tanh_normal_sampler
from .decoders import ConvDecoder, MLPDecoder
from .encoders import ConvEncoder, MLPEncoder, pixels_to_model
from .heads import RewardModel, ValueModel
from .rssm import RSSMPosterior, RSSMPrior, RSSMRollout
from .world_model import RSSMWorldModel, make_world_model

# TorchRL names, so that `from torchrl_rssm.modules import ObsEncoder` is a drop-in import.
ObsEncoder = ConvEncoder
ObsDecoder = ConvDecoder

__all__ = [
    "ConvDecoder", "ConvEncoder", "DreamerActor", "ValueModel", "make_dreamer_actor", "make_value_model",
    "tanh_normal_sampler", "MLPDecoder", "MLPEncoder", "ObsDecoder", "ObsEncoder",
    "RSSMPosterior", "RSSMPrior", "StraightThroughOneHotCategorical", "RSSMRollout", "RSSMWorldModel", "RewardModel",
    "make_world_model", "pixels_to_model",
]
