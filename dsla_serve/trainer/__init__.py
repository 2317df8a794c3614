"""Chained distillation of a Hugging Face model into a nested DSLA artifact (`dsla-serve convert`).

    from dsla_serve.trainer import Trainer, load_config
    Trainer(load_config("examples/convert-tiny.yaml")).run()

Modules: `config` (pydantic ConvertConfig), `data` (documents -> packed sequences), `sensitivity`
(conversion order), `losses` / `distill` (one layer's DeepSpeed training), `evaluate` (validation),
`trainer` (the resumable loop), `actor` (the Ray actor; the only module importing ray), `cli`.
DeepSpeed is imported only when a run starts; importing this package imports neither it nor Ray.
"""

from .config import ConfigError, ConvertConfig, load_config, parse_config
from .trainer import LayerResult, Progress, ResumeError, RunSummary, Trainer

__all__ = ["ConfigError", "ConvertConfig", "load_config", "parse_config", "LayerResult", "Progress", "ResumeError",
           "RunSummary", "Trainer"]
