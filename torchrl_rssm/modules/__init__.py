"""RSSM world-model modules (encoders, decoders, RSSM with observe and imagine, the planners' fused
scorer, heads, actor, builder)."""
from .actor import DreamerActor, StraightThroughOneHotCategorical, make_dreamer_actor, make_value_model, tanh_normal_sampler
from .decoders import ConvDecoder, MLPDecoder
from .encoders import ConvEncoder, MLPEncoder, pixels_to_model
from .heads import RewardModel, ValueModel
from .imagination import FastRSSMReturns
from .rssm import RSSMPosterior, RSSMPrior, RSSMRollout, imagine
from .world_model import RSSMWorldModel, make_world_model

# TorchRL names, so that `from torchrl_rssm.modules import ObsEncoder` is a drop-in import.
ObsEncoder = ConvEncoder
ObsDecoder = ConvDecoder

__all__ = [
    "ConvDecoder", "ConvEncoder", "DreamerActor", "FastRSSMReturns", "MLPDecoder", "MLPEncoder", "ObsDecoder",
    "ObsEncoder", "RSSMPosterior", "RSSMPrior", "RSSMRollout", "RSSMWorldModel", "RewardModel",
    "StraightThroughOneHotCategorical", "ValueModel", "imagine", "make_dreamer_actor", "make_value_model",
    "make_world_model", "pixels_to_model", "tanh_normal_sampler",
]
