"""The serving application: an OpenAI-compatible Ray Serve app whose policy actor shifts traffic
between DSLA depths under load (see docs/serving.md).

    from dsla_serve.controller.app import application, build_app      # Serve application / builder
    dsla-serve serve POLICY.yaml | deploy | build | status             # commands/

Modules: `protocol` (OpenAI request/response models), `errors`, `prompting` (tokenize, limits),
`formatting` (responses, SSE), `routing` (weighted pool choice, queue cap), `runs` (one request on one
pool), `ingress_core` / `ingress` (HTTP), `pool` (replica deployment), `window` / `control` /
`policy_actor` (metrics, decisions, the actor), `quality_source` (artifact -> quality floor),
`scaling` (replica counts), `trainer_link` (background trainer), `metrics` (Prometheus),
`status_view` (tables), `app` (the Serve application).

Nothing is imported here, so a replica importing one module does not pay for the others.
"""
