"""The OpenAPI document of the ingress, with the request bodies its routes parse themselves.

The completion routes read their body with `parse_body` (errors.py) rather than a FastAPI body
parameter, so that every malformed body gets an OpenAI-style error naming its field; FastAPI then
cannot see the body's model. `install_openapi(app, bodies)` adds each route's request body to the
document (the models' schemas under components/schemas, referenced from the operation), so clients and
fuzzers such as schemathesis know what to send. Responses are declared on the routes themselves.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"


def install_openapi(app: FastAPI, bodies: dict[tuple[str, str], type[BaseModel] | tuple[type[BaseModel], ...]]) -> None:
    """bodies: (path, method) -> the model of its JSON body (a tuple: any one of them)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        models = sorted({m for value in bodies.values() for m in (value if isinstance(value, tuple) else (value,))},
                        key=lambda m: m.__name__)
        _, definitions = models_json_schema([(m, "validation") for m in models], ref_template=REF)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in definitions.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        for (path, method), value in bodies.items():
            options = value if isinstance(value, tuple) else (value,)
            refs = [{"$ref": REF.format(model=m.__name__)} for m in options]
            schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
            operation = document["paths"][path][method.lower()]
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        app.openapi_schema = document
        return document

    app.openapi = openapi
