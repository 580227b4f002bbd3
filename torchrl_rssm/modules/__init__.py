"""RSSM world-model modules (encoders, decoders, RSSM, imagination engine, heads, actor, builder; DreamerV3's)."""
from .actor import DreamerActor, StraightThroughOneHotCategorical, make_dreamer_actor, make_value_model, tanh_normal_sampler
from .decoders import ConvDecoder, MLPDecoder
from .encoders import ConvEncoder, MLPEncoder, pixels_to_model
from .heads import RewardModel, ValueModel
from .imagination import FastRSSMReturns, imagine
from .rssm import RSSMPosterior, RSSMPrior, RSSMRollout
from .world_model import RSSMWorldModel, make_world_model
from .layers_v3 import DreamerV3ImageDecoder, DreamerV3ImageEncoder, DreamerV3MLP, DreamerV3VectorEncoder
from .rssm_v3 import (RSSMPosteriorV3, RSSMPriorV3, RSSMRolloutV3, filter_step, imagine_step,
                      straight_through_categorical, unimix_probs)
from .two_hot import (SymExpTwoHot, symexp, symexp_bins, symlog, two_hot_cross_entropy, two_hot_decode,
                      two_hot_encode)

# TorchRL names, so that `from torchrl_rssm.modules import ObsEncoder` is a drop-in import.
ObsEncoder = ConvEncoder
ObsDecoder = ConvDecoder

__all__ = [
    "ConvDecoder", "ConvEncoder", "DreamerActor", "FastRSSMReturns", "MLPDecoder", "MLPEncoder", "ObsDecoder",
    "ObsEncoder", "RSSMPosterior", "RSSMPrior", "RSSMRollout", "RSSMWorldModel", "RewardModel",
    "StraightThroughOneHotCategorical", "ValueModel", "imagine", "make_dreamer_actor", "make_value_model",
    "make_world_model", "pixels_to_model", "tanh_normal_sampler",
    # DreamerV3
    "DreamerV3ImageDecoder", "DreamerV3ImageEncoder", "DreamerV3MLP", "DreamerV3VectorEncoder",
    "RSSMPosteriorV3", "RSSMPriorV3", "RSSMRolloutV3", "SymExpTwoHot", "filter_step", "imagine_step",
    "straight_through_categorical", "symexp", "symexp_bins", "symlog", "two_hot_cross_entropy",
    "two_hot_decode", "two_hot_encode", "unimix_probs",
]
