"""SLO policies: the YAML schema users write, and the pure decisions the policy actor applies.

Imports neither torch nor ray (the controller imports this, never the other way round).
"""

from .loader import PolicyError, check_policy_paths, load_policy, parse_policy
from .schema import (SLO, ControllerSettings, HTTPSettings, ModelSection, Policy, Pool, Quality, Resources,
                     TrainerSection, policy_json_schema)

__all__ = [
    "Policy", "ModelSection", "TrainerSection", "Pool", "Resources", "SLO", "Quality", "ControllerSettings",
    "HTTPSettings", "policy_json_schema", "PolicyError", "load_policy", "parse_policy", "check_policy_paths",
]
