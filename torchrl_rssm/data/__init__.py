"""Replay data for sequence models: a chunk replay buffer built from TorchRL parts."""
from .replay import (DEFAULT_EXCLUDE_KEYS, ReplayLoadError, SequenceReplayBuffer, load_replay_buffer,
                     make_replay_buffer, save_replay_buffer)

__all__ = ["DEFAULT_EXCLUDE_KEYS", "ReplayLoadError", "SequenceReplayBuffer", "load_replay_buffer",
           "make_replay_buffer", "save_replay_buffer"]
