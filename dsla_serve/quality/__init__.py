"""Quality measurement of causal LMs, converted or not: held-out-book perplexity by token position,
passkey retrieval, multi-query associative recall; JSON results and PNG plots (`dsla-serve eval`).

Submodules import torch/transformers lazily where they can, so `books` and the episode builders stay
cheap to import. Nothing here imports the trainer or anything above the model package.
"""
