"""Vapi server messages built, and toolgate's answers checked, with the official `vapi_server_sdk`.

    hooks_vapi.py tool-calls --call-id ID --call TOOL_CALL_ID:NAME:ARGS_JSON ... [--from NUMBER]
                  [--var NAME=VALUE ...] [--said ROLE:TEXT ...] [--arguments string|object]
    hooks_vapi.py end-of-call-report --call-id ID [--from NUMBER] [--var NAME=VALUE ...]
                  [--said ROLE:TEXT ...]
    hooks_vapi.py check-response --expect TOOL_CALL_ID:NAME ...  < RESPONSE_BODY
    hooks_vapi.py tools FILE
    hooks_vapi.py serve

`tool-calls` builds a `tool-calls` server message from the SDK's own types (`ServerMessageToolCalls`,
`ToolCall`, `ToolCallFunction`, `Call`, `CreateCustomerDto`, `AssistantOverrides`, `Artifact`
with `BotMessage`/`UserMessage`, and a `toolWithToolCallList` function item), serializes it by
alias into the envelope `{"message": ...}` (plus the legacy `toolCalls` list real messages still
carry) and checks that the message validates as a `ServerMessageToolCalls`. The SDK types
`function.arguments` as a string; real Vapi sends an object there (`toolCallList`, `toolCalls`,
`toolWithToolCallList[].toolCall`), so `--arguments object` turns them into objects after the
check, as the platform does. Prints one line: `{"body", "arguments", "sdk_accepts_as_sent"}`
(whether the SDK also accepts the body exactly as sent; it does not for object arguments).

`end-of-call-report` builds Vapi's end-of-call message from `ServerMessageEndOfCallReport`
(`Artifact`, `Analysis`, an ended `Call`) and checks it the same way. Prints `{"body"}`.

Messages are validated in pydantic's lax mode: the SDK's models rewrite their input in a "before"
validator, so pydantic sees Python values, and strict mode would refuse every ISO date string
(`call.createdAt`). The answers and tool definitions below have no dates and are checked strictly.

`check-response` reads toolgate's answer to a `tool-calls` message on stdin and checks it
strictly (JSON mode) against `ServerMessageResponseToolCalls` / `ToolCallResult`: valid, no key
the SDK does not declare, one result per expected call in request order, each with `toolCallId`
and `name`, and `result` a single-line string. Prints one line per result and a last line
`{"valid", "invalid"}`.

`tools` checks `toolgate tools --format vapi` output (a JSON array) strictly against the SDK's
`CreateToolsRequest` union (what `client.tools.create` takes) and `CreateFunctionToolDto`, with
the limits Vapi documents (name `[a-zA-Z0-9_-]{1,64}`, `server.timeoutSeconds` 1..300, a
delayed message's `timingMilliseconds` 100..120000, a message's `content` at most 1000
characters). One line per tool: `"valid"`, `"invalid"`, `"undeclared"` (keys the SDK's types do
not declare), `"limits"`.

`serve` runs any of these repeatedly in one process, because importing the SDK's message types
takes seconds: each stdin line is `{"argv": [...], "stdin": "..."}` and is answered by one line
`{"code", "lines"}` (the exit code and the lines the command would print).

Exit 0 when everything is as the SDK wants it, 2 when something is not (the lines say what), 1 on
any exception (traceback on stderr).
"""

import argparse
import copy
import datetime as dt
import json
import re
import sys
import time

import pydantic

ORG_ID = "379a13ec-f40d-4055-8959-797c4ee16940"
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


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


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)


def transcript(said, start_ms):
    """`artifact.messages`: the turns as the SDK's BotMessage / UserMessage."""
    from vapi.types import BotMessage, UserMessage

    out = []
    for i, s in enumerate(said):
        role, _, text = s.partition(":")
        t = start_ms + i * 3000
        kind = BotMessage if role == "bot" else UserMessage
        out.append(kind(role=role, message=text, time=t, end_time=t + 2500, seconds_from_start=1.5 + i * 3))
    return out


def call(a, status, now):
    from vapi.types import AssistantOverrides, Call, CreateCustomerDto

    return Call(
        id=a.call_id,
        org_id=ORG_ID,
        created_at=dt.datetime.fromtimestamp(now / 1000 - 60, dt.timezone.utc),
        updated_at=dt.datetime.fromtimestamp(now / 1000, dt.timezone.utc),
        type="inboundPhoneCall",
        status=status,
        phone_call_provider="twilio",
        phone_call_transport="pstn",
        customer=CreateCustomerDto(number=a.from_number),
        assistant_overrides=AssistantOverrides(variable_values=dict(v.split("=", 1) for v in a.var)),
    )


def problems(body, cls):
    """What the SDK finds wrong with `body`'s message as a `cls` (nothing: `[]`)."""
    try:
        cls.model_validate_json(json.dumps(json.loads(body)["message"]))
    except pydantic.ValidationError as e:
        return errors(e)
    return []


def tool_calls(a, out):
    from vapi.types import (
        Artifact,
        CreateCustomerDto,
        OpenAiFunction,
        Server,
        ServerMessageToolCalls,
        ServerMessageToolCallsToolWithToolCallListItem_Function,
        ToolCall,
        ToolCallFunction,
    )

    now = int(time.time() * 1000)
    calls = []
    for c in a.call:
        tool_call_id, name, args = c.split(":", 2)
        json.loads(args)
        calls.append(ToolCall(id=tool_call_id, type="function", function=ToolCallFunction(name=name, arguments=args)))
    tools = [
        ServerMessageToolCallsToolWithToolCallListItem_Function(
            type="function",
            function=OpenAiFunction(name=c.function.name, parameters={"type": "object", "properties": {}}),
            async_=False,
            server=Server(url="https://toolgate.example.com/v1/hooks/vapi-support", timeout_seconds=20),
            messages=[{"type": "request-start", "content": "One moment."}],
            tool_call=c,
        )
        for c in calls
    ]
    message = ServerMessageToolCalls(
        type="tool-calls",
        timestamp=now,
        tool_call_list=calls,
        tool_with_tool_call_list=tools,
        artifact=Artifact(messages=transcript(a.said, now - 20_000)),
        customer=CreateCustomerDto(number=a.from_number),
        call=call(a, "in-progress", now),
    )
    envelope = {"message": dump(message)}
    envelope["message"]["toolCalls"] = copy.deepcopy(envelope["message"]["toolCallList"])
    wrong = problems(json.dumps(envelope), ServerMessageToolCalls)
    if wrong:
        out.append({"valid": False, "invalid": wrong})
        return 2
    if a.arguments == "object":
        m = envelope["message"]
        functions = [c["function"] for c in m["toolCallList"] + m["toolCalls"]]
        functions += [t["toolCall"]["function"] for t in m["toolWithToolCallList"]]
        for f in functions:
            f["arguments"] = json.loads(f["arguments"])
    body = json.dumps(envelope)
    out.append(
        {
            "body": body,
            "arguments": a.arguments,
            "sdk_accepts_as_sent": not problems(body, ServerMessageToolCalls),
        }
    )
    return 0


def end_of_call_report(a, out):
    from vapi.types import Analysis, Artifact, CreateCustomerDto, ServerMessageEndOfCallReport

    now = int(time.time() * 1000)
    said = transcript(a.said, now - 40_000)
    report = ServerMessageEndOfCallReport(
        type="end-of-call-report",
        ended_reason="customer-ended-call",
        timestamp=now,
        started_at=dt.datetime.fromtimestamp(now / 1000 - 60, dt.timezone.utc),
        ended_at=dt.datetime.fromtimestamp(now / 1000, dt.timezone.utc),
        cost=0.12,
        artifact=Artifact(
            messages=said,
            transcript="".join(f"{'AI' if m.role == 'bot' else 'User'}: {m.message}\n" for m in said),
            recording_url="https://storage.vapi.ai/recording-mono.wav",
        ),
        analysis=Analysis(summary="The caller asked for a summary by email.", success_evaluation="true"),
        customer=CreateCustomerDto(number=a.from_number),
        call=call(a, "ended", now),
    )
    body = json.dumps({"message": dump(report)})
    wrong = problems(body, ServerMessageEndOfCallReport)
    if wrong:
        out.append({"valid": False, "invalid": wrong})
        return 2
    out.append({"body": body})
    return 0


def check_response(a, raw, out):
    from vapi.types import ServerMessageResponseToolCalls, ToolCallResult

    expected = [tuple(e.split(":", 1)) for e in a.expect]
    try:
        resp = ServerMessageResponseToolCalls.model_validate_json(raw, strict=True)
    except pydantic.ValidationError as e:
        out.append({"valid": False, "invalid": ["ServerMessageResponseToolCalls: " + x for x in errors(e)]})
        return 2
    invalid = [f"undeclared by the SDK: {k}" for k in undeclared(resp)]
    results = json.loads(raw).get("results")
    if not isinstance(results, list):
        invalid.append("no results list")
        results = []
    if len(results) != len(expected):
        invalid.append(f"{len(results)} results for {len(expected)} tool calls")
    for i, r in enumerate(results):
        line = {"index": i, "toolCallId": r.get("toolCallId"), "name": r.get("name"), "result": r.get("result")}
        wrong = []
        try:
            ToolCallResult.model_validate_json(json.dumps(r), strict=True)
        except pydantic.ValidationError as e:
            wrong += ["ToolCallResult: " + x for x in errors(e)]
        if i < len(expected) and (r.get("toolCallId"), r.get("name")) != expected[i]:
            wrong.append(f"expected {expected[i][0]}:{expected[i][1]} at this place (request order)")
        res = r.get("result")
        if not isinstance(res, str):
            wrong.append("result is not a string")
        elif "\n" in res or "\r" in res:
            wrong.append("result is not a single line")
        if "error" in r:
            line["error"] = r["error"]
        line["valid"] = not wrong
        if wrong:
            line["invalid"] = wrong
            invalid += [f"results[{i}]: {w}" for w in wrong]
        out.append(line)
    out.append({"valid": not invalid, "invalid": invalid})
    return 0 if not invalid else 2


def check_tools(path, out):
    from vapi.tools.types import CreateToolsRequest
    from vapi.types import CreateFunctionToolDto

    union = pydantic.TypeAdapter(CreateToolsRequest)
    bad = 0
    for d in json.load(open(path)):
        raw = json.dumps(d)
        name = (d.get("function") or {}).get("name")
        line = {"name": name, "valid": True, "invalid": [], "undeclared": [], "limits": []}
        try:
            request = union.validate_json(raw, strict=True)
            if type(request).__name__ != "CreateToolsRequest_Function":
                line["invalid"].append(f"CreateToolsRequest reads it as {type(request).__name__}")
            line["undeclared"] = undeclared(request)
        except pydantic.ValidationError as e:
            line["invalid"] += ["CreateToolsRequest: " + x for x in errors(e)]
        try:
            dto = json.dumps({k: v for k, v in d.items() if k != "type"})
            CreateFunctionToolDto.model_validate_json(dto, strict=True)
        except pydantic.ValidationError as e:
            line["invalid"] += ["CreateFunctionToolDto: " + x for x in errors(e)]
        line["valid"] = not line["invalid"]
        if not NAME.fullmatch(str(name)):
            line["limits"].append("function.name: a-z, A-Z, 0-9, underscores and dashes, at most 64")
        timeout = (d.get("server") or {}).get("timeoutSeconds")
        if timeout is not None and not 1 <= timeout <= 300:
            line["limits"].append(f"server.timeoutSeconds {timeout}: 1..300")
        for i, m in enumerate(d.get("messages") or []):
            if len(m.get("content") or "") > 1000:
                line["limits"].append(f"messages[{i}].content: at most 1000 characters")
            ms = m.get("timingMilliseconds")
            if ms is not None and not 100 <= ms <= 120_000:
                line["limits"].append(f"messages[{i}].timingMilliseconds {ms}: 100..120000")
        if not line["valid"] or line["limits"]:
            bad += 1
        out.append(line)
    return 2 if bad else 0


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("tool-calls", "end-of-call-report"):
        s = sub.add_parser(name)
        s.add_argument("--call-id", required=True, help="message.call.id")
        s.add_argument("--from", dest="from_number", default="+14155550100")
        s.add_argument("--var", action="append", default=[], help="an assistantOverrides.variableValues entry")
        s.add_argument("--said", action="append", default=[], help="a transcript turn, bot:TEXT or user:TEXT")
        if name == "tool-calls":
            s.add_argument("--call", action="append", required=True, help="TOOL_CALL_ID:NAME:ARGS_JSON")
            s.add_argument("--arguments", choices=["string", "object"], default="string")
    s = sub.add_parser("check-response")
    s.add_argument("--expect", action="append", default=[], help="TOOL_CALL_ID:NAME, in request order")
    s = sub.add_parser("tools")
    s.add_argument("file", help="`toolgate tools --format vapi` output")
    sub.add_parser("serve")
    return p


def run(argv, stdin, out):
    a = parser().parse_args(argv)
    if a.cmd == "tool-calls":
        return tool_calls(a, out)
    if a.cmd == "end-of-call-report":
        return end_of_call_report(a, out)
    if a.cmd == "check-response":
        return check_response(a, stdin(), out)
    if a.cmd == "tools":
        return check_tools(a.file, out)
    raise SystemExit("serve does not nest")


def serve():
    for request in sys.stdin:
        if not request.strip():
            continue
        r = json.loads(request)
        out = []
        code = run(r["argv"], lambda: r.get("stdin", ""), out)
        print(json.dumps({"code": code, "lines": out}, sort_keys=True), flush=True)
    return 0


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["serve"]:
        sys.exit(serve())
    out = []
    code = run(argv, sys.stdin.read, out)
    for line in out:
        print(json.dumps(line, sort_keys=True), flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
