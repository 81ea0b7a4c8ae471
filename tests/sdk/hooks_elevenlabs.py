"""toolgate's ElevenLabs webhook tools checked, and called, with the official `elevenlabs` SDK.

    hooks_elevenlabs.py tools FILE
    hooks_elevenlabs.py request FILE --name FUNCTION --args JSON --conversation-id ID [--caller NUMBER]

`tools` checks `toolgate tools --format elevenlabs` output (a JSON array of tool configs) against
the SDK's types for creating a tool: `ToolRequestModel` (`POST /v1/convai/tools`, its
`tool_config` read as the `webhook` member of the union) and `WebhookToolConfigInput`, strictly
(JSON mode). Besides the SDK's errors (`"invalid"`) and the keys its types do not declare
(`"undeclared"`), it checks what the SDK documents but does not enforce (`"limits"`):
`response_timeout_secs` 5..300, `api_schema.method` set (ElevenLabs defaults to GET), and each
body property taking its value from exactly one source (`description` for the model,
`dynamic_variable`, `is_system_provided`, `constant_value` or `is_omitted`). One line per tool.

`request` plays ElevenLabs calling one of those tools: it reads the tool's definition through the
SDK's model and builds the JSON body its `request_body_schema` describes, with the model's
arguments (`--args`) for the properties the model fills, the system dynamic variables
(`system__conversation_id`, `system__caller_id`, `system__agent_id`, ...) for the
`dynamic_variable` ones, and the constants. Prints `{"method", "url", "body", "headers"}`
(`headers`: the header names the tool sends; their values are workspace secrets).

Exit 0 when everything is as the SDK wants it, 2 when something is not (the lines say what), 1 on
any exception (traceback on stderr).
"""

import argparse
import json
import sys

import pydantic
from elevenlabs.types import (
    LiteralJsonSchemaProperty,
    ObjectJsonSchemaPropertyInput,
    ToolRequestModel,
    WebhookToolConfigInput,
)

SOURCES = ("description", "dynamic_variable", "is_system_provided", "constant_value", "is_omitted")


def emit(line):
    print(json.dumps(line, sort_keys=True), flush=True)


def errors(e):
    return [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()][:6]


def undeclared(model, path=""):
    """Keys present in the data that the SDK's types do not declare (they allow extras)."""
    out = []
    if isinstance(model, pydantic.BaseModel):
        out += [f"{path}{k}" for k in (model.model_extra or {})]
        for name in type(model).model_fields:
            out += undeclared(getattr(model, name), f"{path}{name}.")
    elif isinstance(model, (list, tuple)):
        for i, v in enumerate(model):
            out += undeclared(v, f"{path}{i}.")
    elif isinstance(model, dict):
        for k, v in model.items():
            out += undeclared(v, f"{path}{k}.")
    return out


def config(d):
    """The tool's definition as the SDK reads it (`type` is the union's tag, not a field)."""
    return WebhookToolConfigInput.model_validate_json(
        json.dumps({k: v for k, v in d.items() if k != "type"}), strict=True
    )


def properties(schema, path):
    """Each literal property of a body schema, by its dotted path."""
    for name, p in (schema.properties or {}).items():
        if isinstance(p, ObjectJsonSchemaPropertyInput):
            yield from properties(p, f"{path}{name}.")
        else:
            yield f"{path}{name}", p


def check_tools(path):
    bad = 0
    for d in json.load(open(path)):
        line = {"name": d.get("name"), "valid": True, "invalid": [], "undeclared": [], "limits": []}
        try:
            request = ToolRequestModel.model_validate_json(json.dumps({"tool_config": d}), strict=True)
            kind = type(request.tool_config).__name__
            if kind != "ToolRequestModelToolConfig_Webhook":
                line["invalid"].append(f"ToolRequestModel reads tool_config as {kind}")
            line["undeclared"] = undeclared(request.tool_config)
        except pydantic.ValidationError as e:
            line["invalid"] += ["ToolRequestModel: " + x for x in errors(e)]
        try:
            cfg = config(d)
        except pydantic.ValidationError as e:
            line["invalid"] += ["WebhookToolConfigInput: " + x for x in errors(e)]
            cfg = None
        line["valid"] = not line["invalid"]
        if cfg is not None:
            t = cfg.response_timeout_secs
            if t is not None and not 5 <= t <= 300:
                line["limits"].append(f"response_timeout_secs {t}: 5..300")
            if cfg.api_schema.method is None:
                line["limits"].append("api_schema.method unset: ElevenLabs then sends GET, without a body")
            schema = cfg.api_schema.request_body_schema
            for name, p in properties(schema, "") if schema else []:
                if not isinstance(p, LiteralJsonSchemaProperty):
                    continue
                set_ = [s for s in SOURCES if getattr(p, s) is not None]
                if len(set_) != 1:
                    line["limits"].append(f"request_body_schema.{name}: one value source, not {set_}")
        if not line["valid"] or line["limits"]:
            bad += 1
        emit(line)
    return 2 if bad else 0


def request(a):
    tool = next((d for d in json.load(open(a.file)) if d.get("name") == a.name), None)
    if tool is None:
        emit({"valid": False, "invalid": [f"no tool {a.name!r} in {a.file}"]})
        return 2
    cfg = config(tool)
    system = {
        "system__conversation_id": a.conversation_id,
        "system__caller_id": a.caller,
        "system__called_number": "+15559870000",
        "system__agent_id": "agent_01jx0000000000000000000000",
        "system__current_agent_id": "agent_01jx0000000000000000000000",
        "system__call_sid": "CA6b6c5e52e5cdda6cad7405ff7b66f0d6",
        "system__time_utc": "2025-06-01T12:00:00Z",
        "system__call_duration_secs": 42,
    }
    model_args = json.loads(a.args)
    body = {}
    missing = []
    schema = cfg.api_schema.request_body_schema
    for name, p in (schema.properties or {}).items() if schema else []:
        if not isinstance(p, LiteralJsonSchemaProperty):
            continue
        if p.is_omitted:
            continue
        if p.dynamic_variable is not None:
            if p.dynamic_variable not in system:
                missing.append(f"{name}: no dynamic variable {p.dynamic_variable}")
                continue
            body[name] = system[p.dynamic_variable]
        elif p.constant_value is not None:
            body[name] = p.constant_value
        elif name in model_args:
            body[name] = model_args[name]
        elif name in (schema.required or []):
            missing.append(f"{name}: required, and the model gave no value")
    if missing:
        emit({"valid": False, "invalid": missing})
        return 2
    emit(
        {
            "method": cfg.api_schema.method,
            "url": cfg.api_schema.url,
            "body": json.dumps(body),
            "headers": sorted(cfg.api_schema.request_headers or {}),
        }
    )
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("tools")
    s.add_argument("file", help="`toolgate tools --format elevenlabs` output")
    s = sub.add_parser("request")
    s.add_argument("file", help="`toolgate tools --format elevenlabs` output")
    s.add_argument("--name", required=True, help="the tool to call")
    s.add_argument("--args", required=True, help="the model's arguments, a JSON object")
    s.add_argument("--conversation-id", required=True)
    s.add_argument("--caller", default="+14155550100")
    a = p.parse_args()
    sys.exit(check_tools(a.file) if a.cmd == "tools" else request(a))


if __name__ == "__main__":
    main()
