"""Retell custom-function requests, built and signed with the official `retell-sdk`.

    hooks_retell.py KEY --call-id ID --name FUNCTION --args JSON [--from NUMBER]
                    [--var NAME=VALUE ...] [--said ROLE:TEXT ...]
    hooks_retell.py tools FILE

The first form plays Retell calling a custom function: the request body is
`{"name", "args", "call"}`, where `call` is validated strictly (JSON mode) against the SDK's own
`PhoneCallResponse` and serialized back from that model (`to_dict`). The body is signed with the
SDK's signing helper (`retell.lib.webhook_auth.symmetric["sign"]`, the counterpart of the public
`Retell(api_key=...).verify`), and every signature printed is also judged by
`Retell(api_key=KEY).verify` (`"sdk_verify"`). One JSON line per case, `{"case", "body",
"signature", "sdk_verify"}`:

- `signed`: the body as signed now;
- `future`: the same body stamped 4 minutes ahead (inside the SDK's symmetric 5-minute window);
- `tampered`: another body (other arguments) under the signature of `signed`;
- `stale`: the body stamped 5.5 minutes ago;
- `wrong_key`: the body signed with another key;
- `seconds`: the body stamped in seconds instead of milliseconds;
- `call_ended`: Retell's `call_ended` event for the same call (its `call` also validated as a
  `PhoneCallResponse`), signed now.

The second form checks `toolgate tools --format retell` output (a JSON array) against the SDK's
custom tool type (`retell.types.llm_response.GeneralToolCustomTool`, and the request-side
TypedDict `retell.types.llm_create_params.GeneralToolCustomTool`), printing one line per tool
with `"valid"`, `"invalid"` (the SDK's errors), `"undeclared"` (keys the SDK's types do not
declare) and `"limits"` (the limits the SDK documents: name `[a-zA-Z0-9_-]{1,64}`, `timeout_ms`
1000..600000).

Exit 0 when everything is as the SDK wants it, 2 when something is not (the lines say what), 1 on
any exception (traceback on stderr).
"""

import argparse
import json
import re
import sys
import time

import pydantic
from retell import Retell
from retell.lib import webhook_auth
from retell.types import PhoneCallResponse
from retell.types import llm_create_params
from retell.types.llm_response import GeneralToolCustomTool

TO_NUMBER = "+15559870000"
AGENT_ID = "oBeDLoLOeuAbiuaMFXRtDOLriTJ5tSxD"
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


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


def call_object(a, status, now_ms):
    """The call as Retell sends it, validated and re-serialized by the SDK's PhoneCallResponse."""
    turns = []
    for said in a.said:
        role, _, text = said.partition(":")
        words = []
        t = 0.5
        for w in text.split():
            words.append({"word": w, "start": round(t, 2), "end": round(t + 0.3, 2)})
            t += 0.35
        turns.append({"role": role, "content": text, "words": words})
    call = {
        "call_type": "phone_call",
        "call_id": a.call_id,
        "agent_id": AGENT_ID,
        "agent_version": 1,
        "call_status": status,
        "direction": "inbound",
        "from_number": a.from_number,
        "to_number": TO_NUMBER,
        "retell_llm_dynamic_variables": dict(v.split("=", 1) for v in a.var),
        "metadata": {},
        "start_timestamp": now_ms - 20_000,
        "transcript": "".join(
            f"{'Agent' if t['role'] == 'agent' else 'User'}: {t['content']}\n" for t in turns
        ),
        "transcript_object": turns,
        "transcript_with_tool_calls": [dict(t, words=[]) for t in turns]
        + [
            {
                "role": "tool_call_invocation",
                "tool_call_id": "tc_1",
                "name": a.name,
                "arguments": json.dumps(json.loads(a.args), separators=(",", ":")),
            }
        ],
    }
    if status == "ended":
        call.update(
            end_timestamp=now_ms,
            duration_ms=20_000,
            disconnection_reason="user_hangup",
        )
    model = PhoneCallResponse.model_validate_json(json.dumps(call), strict=True)
    return model.to_dict(mode="json", exclude_unset=True)


def sign_cases(a):
    key = a.key
    client = Retell(api_key=key)
    sign = webhook_auth.symmetric["sign"]
    now = int(time.time() * 1000)
    body = json.dumps({"name": a.name, "args": json.loads(a.args), "call": call_object(a, "ongoing", now)})
    other_args = dict(json.loads(a.args), tampered=True)
    tampered = json.dumps({"name": a.name, "args": other_args, "call": call_object(a, "ongoing", now)})
    signed = sign(body, key)
    ended = json.dumps({"event": "call_ended", "call": call_object(a, "ended", now)})
    cases = [
        ("signed", body, signed),
        ("future", body, sign(body, key, now + 4 * 60 * 1000)),
        ("tampered", tampered, signed),
        ("stale", body, sign(body, key, now - 330 * 1000)),
        ("wrong_key", body, sign(body, key + "-other", now)),
        ("seconds", body, sign(body, key, now // 1000)),
        ("call_ended", ended, sign(ended, key)),
    ]
    for case, b, sig in cases:
        emit({"case": case, "body": b, "signature": sig, "sdk_verify": bool(client.verify(b, key, sig))})
    expected = {"signed": True, "future": True, "call_ended": True}
    wrong = [c for c, b, s in cases if bool(client.verify(b, key, s)) != expected.get(c, False)]
    if wrong:
        print(f"the SDK judged these cases unexpectedly: {wrong}", file=sys.stderr)
        return 2
    return 0


def check_tools(path):
    defs = json.load(open(path))
    request = pydantic.TypeAdapter(llm_create_params.GeneralToolCustomTool)
    bad = 0
    for d in defs:
        raw = json.dumps(d)
        line = {"name": d.get("name"), "valid": True, "invalid": [], "undeclared": [], "limits": []}
        try:
            line["undeclared"] = undeclared(GeneralToolCustomTool.model_validate_json(raw, strict=True))
        except pydantic.ValidationError as e:
            line["valid"] = False
            line["invalid"] += ["GeneralToolCustomTool: " + x for x in errors(e)]
        try:
            request.validate_json(raw, strict=True)
        except pydantic.ValidationError as e:
            line["valid"] = False
            line["invalid"] += ["llm_create_params.GeneralToolCustomTool: " + x for x in errors(e)]
        if not NAME.fullmatch(str(d.get("name"))):
            line["limits"].append("name: a-z, A-Z, 0-9, underscores and dashes, at most 64")
        timeout = d.get("timeout_ms")
        if timeout is not None and not 1000 <= timeout <= 600_000:
            line["limits"].append(f"timeout_ms {timeout}: 1000..600000")
        if not line["valid"] or line["limits"]:
            bad += 1
        emit(line)
    return 2 if bad else 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "tools":
        p = argparse.ArgumentParser(description="check toolgate's Retell export with the SDK")
        p.add_argument("cmd")
        p.add_argument("file", help="`toolgate tools --format retell` output")
        sys.exit(check_tools(p.parse_args().file))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("key", help="the Retell API key that signs webhooks (the hook's secret)")
    p.add_argument("--call-id", required=True)
    p.add_argument("--name", required=True, help="the custom function")
    p.add_argument("--args", required=True, help="its arguments, a JSON object")
    p.add_argument("--from", dest="from_number", default="+14155550100")
    p.add_argument("--var", action="append", default=[], help="a retell_llm_dynamic_variables entry")
    p.add_argument("--said", action="append", default=[], help="a transcript turn, agent:TEXT or user:TEXT")
    sys.exit(sign_cases(p.parse_args()))


if __name__ == "__main__":
    main()
