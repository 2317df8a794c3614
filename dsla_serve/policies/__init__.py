"""SLO policies: the YAML schema users write, and the pure decisions the policy actor applies.

Imports neither torch nor ray (the controller imports this, never the other way round).

    from dsla_serve.policies import load_policy, initial_state, decide, PoolMetrics, DepthQuality
"""

from .decide import ControllerState, Decision, decide, initial_state
from .loader import PolicyError, check_policy_paths, load_policy, parse_policy
from .pressure import HIGH, LOW, NEUTRAL, UNKNOWN, PoolMetrics, PoolSignal
from .quality import DepthQuality, explain_floor, quality_floor
from .schema import (SLO, ControllerSettings, HTTPSettings, ModelSection, Policy, Pool, Quality, Resources,
                     TrainerSection, policy_json_schema)
from .trainer_config import convert_config_data

__all__ = [
    "Policy", "ModelSection", "TrainerSection", "Pool", "Resources", "SLO", "Quality", "ControllerSettings",
    "HTTPSettings", "policy_json_schema", "PolicyError", "load_policy", "parse_policy", "check_policy_paths",
    "PoolMetrics", "PoolSignal", "HIGH", "NEUTRAL", "LOW", "UNKNOWN", "DepthQuality", "quality_floor",
    "explain_floor", "ControllerState", "Decision", "initial_state", "decide", "convert_config_data",
]
