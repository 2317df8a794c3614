"""The HTTP front end: the OpenAI-compatible ingress (a Ray Serve deployment) and what it needs.

Modules: `ingress` (FastAPI routes), `ingress_state` (routing table, pool handles, limits, tokenizer,
the observations it sends to the policy actor), `protocol` (OpenAI request and response models),
`errors` (OpenAI-style error bodies), `prompting` (tokenize, limits, sampling), `routing` (weighted pool
choice, queue cap), `runs` (one request on one pool), `formatting` (responses and SSE chunks from
stream deltas), `prompt_sample` (the opt-in served-prompt sample), `metrics` (Prometheus).
Imports nothing of the control plane: the two talk through `controller/messages.py`.
"""
