"""The serving application: an OpenAI-compatible Ray Serve app whose policy actor shifts traffic
between DSLA depths under load (see docs/serving.md and docs/design.md).

    from dsla_serve.controller.app import application, build_app      # Serve application / builder

Two halves that import nothing of each other and talk through `messages.py`:

- `frontend/`: the HTTP front end (the ingress deployment: OpenAI protocol, errors, tokenizing,
  routing, streaming, the served-prompt sample);
- `control_plane/`: the policy actor deployment (metrics window, decisions, scaling, the trainer link,
  status).

`app.py` binds them with the pools' replicas (`replicas/deployment.py`). The `dsla-serve serve |
deploy | build | status` commands are in `dsla_serve/commands/`. Nothing is imported here.
"""
