"""A Deepgram Voice Agent app on the official `deepgram-sdk`, pointed at a toolgate relay ticket.

    relay_deepgram.py TICKET_URL API_KEY [--until TYPE] [--timeout SECONDS]

It connects the way an app does (`AsyncDeepgramClient` with a `DeepgramClientEnvironment` whose
`agent` URL is TICKET_URL, then `client.agent.v1.connect()`, so the SDK itself appends
`/v1/agent/converse`), sends its `Settings` with one function of its own (`lookup_order`, no
endpoint: client side), and answers `FunctionCallRequest`s for that function with the SDK's
`send_function_call_response`.

Every message becomes one JSON line on stdout: its type, a few fields, and whether it also
validates strictly against the SDK's own type for it (`"valid"`); what the script sends is a line
with `"sent"`. It stops after the first message of type `--until` (default `AgentAudioDone`) and
closes the connection (exit 0). A close before that (exit 4), the timeout (exit 3) or any SDK
exception (exit 1, traceback on stderr) is a failure.
"""

import argparse
import asyncio
import json
import sys
import typing
import urllib.parse

import pydantic
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.agent.v1.socket_client import V1SocketClientResponse
from deepgram.agent.v1.types import (
    AgentV1FunctionCallRequest,
    AgentV1SendFunctionCallResponse,
    AgentV1Settings,
)

SETTINGS = {
    "type": "Settings",
    "audio": {
        "input": {"encoding": "linear16", "sample_rate": 24000},
        "output": {"encoding": "linear16", "sample_rate": 24000, "container": "none"},
    },
    "agent": {
        "language": "en",
        "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
        "think": {
            "provider": {"type": "open_ai", "model": "gpt-4o-mini"},
            "prompt": "You are Acme's order line. Be brief.",
            "functions": [
                {
                    "name": "lookup_order",
                    "description": "Look up the status of one of the caller's orders.",
                    "parameters": {
                        "type": "object",
                        "properties": {"order_id": {"type": "string"}},
                        "required": ["order_id"],
                    },
                }
            ],
        },
        "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
        "greeting": "Thanks for calling Acme.",
    },
}

# The SDK's type for each message it can receive, by `type`, to validate strictly.
TYPES = {
    cls.model_fields["type"].default: cls
    for cls in typing.get_args(V1SocketClientResponse)
    if isinstance(cls, type) and issubclass(cls, pydantic.BaseModel) and "type" in cls.model_fields
}


def emit(line):
    print(json.dumps(line, sort_keys=True), flush=True)


def describe(msg):
    """The message's type and the few fields a test looks at."""
    if isinstance(msg, bytes):
        return {"type": "<binary>", "bytes": len(msg)}
    raw = msg if isinstance(msg, dict) else msg.dict()
    ty = raw.get("type")
    line = {"type": ty}
    for key in ("role", "content", "request_id", "message", "description"):
        if raw.get(key) is not None:
            line[key] = raw[key]
    if isinstance(raw.get("functions"), list):
        line["functions"] = [
            {k: f.get(k) for k in ("id", "name", "arguments", "client_side") if k in f} for f in raw["functions"]
        ]
    cls = TYPES.get(ty)
    if cls is None:
        line["valid"] = False
        line["invalid"] = ["not a message type of this SDK"]
    else:
        try:
            cls.model_validate(raw)
            line["valid"] = True
        except pydantic.ValidationError as e:
            line["valid"] = False
            line["invalid"] = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()][:4]
    return line


async def run(url, key, until):
    origin = urllib.parse.urlsplit(url)
    http = urllib.parse.urlunsplit(("https" if origin.scheme == "wss" else "http", origin.netloc, "", "", ""))
    env = DeepgramClientEnvironment(base=http, production=url, agent=url, agent_rest=http)
    client = AsyncDeepgramClient(api_key=key, environment=env)
    async with client.agent.v1.connect() as agent:
        await agent.send_settings(AgentV1Settings(**SETTINGS))
        emit({"sent": "Settings", "functions": ["lookup_order"]})
        async for msg in agent:
            emit(describe(msg))
            if isinstance(msg, AgentV1FunctionCallRequest):
                for f in msg.functions:
                    if not (f.client_side and f.name == "lookup_order"):
                        continue
                    args = json.loads(f.arguments)
                    content = json.dumps({"order_id": args.get("order_id"), "status": "shipped", "eta": "Friday"})
                    answer = AgentV1SendFunctionCallResponse(
                        type="FunctionCallResponse", id=f.id, name=f.name, content=content
                    )
                    await agent.send_function_call_response(answer)
                    emit({"sent": "FunctionCallResponse", "id": f.id, "content": content})
            if not isinstance(msg, bytes) and getattr(msg, "type", None) == until:
                return 0
    emit({"closed": "before a message of type " + until})
    return 4


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="the ticket's deepgram_url")
    p.add_argument("key", help="the Deepgram key, sent as Authorization: Token")
    p.add_argument("--until", default="AgentAudioDone", help="stop after the first message of this type")
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()
    try:
        code = asyncio.run(asyncio.wait_for(run(a.url, a.key, a.until), a.timeout))
    except asyncio.TimeoutError:
        print(f"timed out after {a.timeout} s before a message of type {a.until}", file=sys.stderr)
        code = 3
    sys.exit(code)


if __name__ == "__main__":
    main()
