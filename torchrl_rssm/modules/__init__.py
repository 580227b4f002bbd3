"""RSSM world-model modules (encoders, decoders, RSSM with observe and imagine, the planners' fused
scorer, heads, actor, builder; DreamerV3's categorical RSSM, two-hot heads and actors)."""
from .actor import DreamerActor, StraightThroughOneHotCategorical, make_dreamer_actor, make_value_model, tanh_normal_sampler
from .decoders import ConvDecoder, MLPDecoder
from .encoders import ConvEncoder, MLPEncoder, pixels_to_model
from .heads import RewardModel, ValueModel
from .heads_v3 import (DreamerV3BoundedNormalActor, DreamerV3ContinuationHead, DreamerV3DiscreteActor,
                       DreamerV3RewardHead, DreamerV3TwoHotHead, DreamerV3ValueHead)
from .imagination import FastRSSMReturns
from .layers_v3 import DreamerV3ImageDecoder, DreamerV3ImageEncoder, DreamerV3MLP, DreamerV3VectorEncoder
from .rssm import RSSMPosterior, RSSMPrior, RSSMRollout, imagine
from .rssm_v3 import (RSSMPosteriorV3, RSSMPriorV3, RSSMRolloutV3, filter_step, imagine_step,
                      straight_through_categorical, unimix_probs)
from .two_hot import (SymExpTwoHot, symexp, symexp_bins, symlog, two_hot_cross_entropy, two_hot_decode,
                      two_hot_encode)
from .world_model import RSSMWorldModel, make_world_model
from .world_model_v3 import DreamerV3WorldModel, make_world_model_v3

# TorchRL names, so that `from torchrl_rssm.modules import ObsEncoder` is a drop-in import.
ObsEncoder = ConvEncoder
ObsDecoder = ConvDecoder

__all__ = [
    "ConvDecoder", "ConvEncoder", "DreamerActor", "DreamerV3BoundedNormalActor", "DreamerV3ContinuationHead",
    "DreamerV3DiscreteActor", "DreamerV3ImageDecoder", "DreamerV3ImageEncoder", "DreamerV3MLP",
    "DreamerV3RewardHead", "DreamerV3TwoHotHead", "DreamerV3ValueHead", "DreamerV3VectorEncoder", "DreamerV3WorldModel",
    "FastRSSMReturns", "MLPDecoder", "MLPEncoder", "ObsDecoder", "ObsEncoder", "RSSMPosterior", "RSSMPosteriorV3",
    "RSSMPrior", "RSSMPriorV3", "RSSMRollout", "RSSMRolloutV3", "RSSMWorldModel", "RewardModel",
    "StraightThroughOneHotCategorical", "SymExpTwoHot", "ValueModel", "filter_step", "imagine", "imagine_step",
    "make_dreamer_actor", "make_value_model", "make_world_model", "make_world_model_v3", "pixels_to_model", "straight_through_categorical",
    "symexp", "symexp_bins", "symlog", "tanh_normal_sampler", "two_hot_cross_entropy", "two_hot_decode",
    "two_hot_encode", "unimix_probs",
]
