"""The control plane: the policy actor (a Ray Serve deployment) and its logic.

Modules: `policy_actor` (the deployment and its loop), `control` (reports and observations in,
targets, routing, decisions and status out; no Ray), `window` (per-pool metrics over the window),
`artifact_view` (the artifact's published depths and their quality), `scaling` (replica counts through
Serve), `trainer_link` (the background trainer). The Prometheus gauges are read from its `Status`
by the ingress's /metrics.
Imports nothing of the HTTP front end: the two talk through `controller/messages.py`.
"""
