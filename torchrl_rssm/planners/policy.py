"""Old import path of PlaNet's acting policy: now :mod:`torchrl_rssm.policies.planet`."""
from ..policies.planet import PlaNetPolicy

__all__ = ["PlaNetPolicy"]
