"""Chained distillation of a Hugging Face model into a nested DSLA artifact (`dsla-serve convert`).

    from dsla_serve.trainer import Trainer, load_config
    Trainer(load_config("examples/convert-tiny.yaml")).run()

Modules: `config` (pydantic TrainerSettings / ConvertConfig, torch-free: a policy's trainer section is
TrainerSettings), `data` (documents -> packed sequences), `episodes` (retrieval episodes mixed into the
rows), `sensitivity` (conversion orders), `losses` / `chunked` (the objective), `distill` (the one
training loop of a layer), `optim` (its optimiser strategy: DeepSpeed or plain AdamW), `evaluate`
(validation), `trainer` (the resumable chain), `progress` (what it tells other processes:
`TrainerProgress`, `LayerResult`), `actor` (the Ray actor; the only module importing ray),
`cli`. DeepSpeed is imported only when a run with `training.optimizer: deepspeed` starts; importing this
package imports neither it nor Ray, nor torch.
"""

from importlib import import_module

# Re-exports resolve on first use (PEP 562), so that `dsla_serve.trainer.losses` and the other
# torch-only modules import on machines without pydantic (the GPU image lacks it).
_EXPORTS = {"ConfigError": "config", "ConvertConfig": "config", "TrainerSettings": "config", "load_config": "config",
            "parse_config": "config",
            "LayerResult": "progress", "TrainerProgress": "progress", "ResumeError": "trainer", "RunSummary": "trainer",
            "Trainer": "trainer"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
