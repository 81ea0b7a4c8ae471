"""An OpenAI Realtime app on the official `openai` SDK, pointed at a toolgate relay ticket.

    relay_openai.py TICKET_URL API_KEY [--until EVENT_ID] [--timeout SECONDS]

It connects the way an app does (`AsyncOpenAI(websocket_base_url=TICKET_URL)`, then
`client.realtime.connect(model="gpt-realtime")`, so the SDK itself appends `/realtime?model=...`),
configures the session with one function of its own (`lookup_order`), and answers calls of that
function like an app: `conversation.item.create` (function_call_output), then `response.create`.

Every server event becomes one JSON line on stdout: its type, a few fields, and whether it also
validates strictly against the SDK's own types (`"valid"`); what the script sends is a line with
`"sent"`. It stops after the server event whose `event_id` is `--until` (default `evt_end`) and
closes the connection (exit 0). A close before that (exit 4), the timeout (exit 3) or any SDK
exception (exit 1, traceback on stderr) is a failure.
"""

import argparse
import asyncio
import json
import sys
import typing

import pydantic
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent

LOOKUP_ORDER = {
    "type": "function",
    "name": "lookup_order",
    "description": "Look up the status of one of the caller's orders.",
    "parameters": {
        "type": "object",
        "properties": {"order_id": {"type": "string"}},
        "required": ["order_id"],
    },
}



def _event_types():
    """The SDK's type for each server event, by `type`, to validate strictly."""
    union = RealtimeServerEvent
    if typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    types = {}
    for cls in typing.get_args(union):
        for name in typing.get_args(cls.model_fields["type"].annotation):
            types[name] = cls
    return types


TYPES = _event_types()


def emit(line):
    print(json.dumps(line, sort_keys=True), flush=True)


def describe(ev):
    """The event's type and the few fields a test looks at."""
    raw = ev.to_dict(mode="json")
    line = {"type": ev.type, "event_id": raw.get("event_id")}
    for key in ("response_id", "item_id", "call_id", "name", "arguments", "transcript"):
        if key in raw:
            line[key] = raw[key]
    if isinstance(raw.get("response"), dict):
        resp = raw["response"]
        line["response"] = {
            "id": resp.get("id"),
            "status": resp.get("status"),
            "output": [
                {k: o.get(k) for k in ("type", "name", "call_id") if k in o}
                for o in resp.get("output") or []
            ],
        }
    if isinstance(raw.get("item"), dict):
        item = raw["item"]
        line["item"] = {k: item.get(k) for k in ("id", "type", "name", "call_id") if k in item}
    if isinstance(raw.get("session"), dict):
        line["tools"] = [t.get("name") for t in raw["session"].get("tools") or []]
    cls = TYPES.get(ev.type)
    if cls is None:
        line["valid"] = False
        line["invalid"] = ["not a server event type of this SDK"]
    else:
        try:
            cls.model_validate(raw)
            line["valid"] = True
        except pydantic.ValidationError as e:
            line["valid"] = False
            line["invalid"] = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()][:4]
    return line


async def run(url, key, until):
    client = AsyncOpenAI(api_key=key, websocket_base_url=url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "You are Acme's order line. Be brief.",
                "output_modalities": ["audio"],
                "tool_choice": "auto",
                "tools": [LOOKUP_ORDER],
            }
        )
        emit({"sent": "session.update", "tools": ["lookup_order"]})
        async for ev in conn:
            emit(describe(ev))
            if ev.type == "response.function_call_arguments.done" and ev.name == "lookup_order":
                args = json.loads(ev.arguments)
                output = json.dumps({"order_id": args.get("order_id"), "status": "shipped", "eta": "Friday"})
                await conn.conversation.item.create(
                    item={"type": "function_call_output", "call_id": ev.call_id, "output": output}
                )
                emit({"sent": "conversation.item.create", "call_id": ev.call_id, "output": output})
                await conn.response.create()
                emit({"sent": "response.create"})
            if getattr(ev, "event_id", None) == until:
                return 0
    emit({"closed": "before the event " + until})
    return 4


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="the ticket's openai_url")
    p.add_argument("key", help="the OpenAI key, sent as Authorization: Bearer")
    p.add_argument("--until", default="evt_end", help="stop after the server event with this event_id")
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()
    try:
        code = asyncio.run(asyncio.wait_for(run(a.url, a.key, a.until), a.timeout))
    except asyncio.TimeoutError:
        print(f"timed out after {a.timeout} s before the event {a.until}", file=sys.stderr)
        code = 3
    sys.exit(code)


if __name__ == "__main__":
    main()
