"""A small local stand-in for the Slack Web API (WebClient(base_url=...) points here).

It checks what it receives the way Slack would: the bot token, the required fields of each
method, and well-formed Block Kit (known block types, text lengths, unique action_id and
block_id, element counts). Every call is recorded for assertions; malformed ones are answered
``ok: false`` like Slack and also collected in ``errors`` so tests can fail on them.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOCK_TYPES = {"section", "header", "actions", "context", "divider", "input", "image", "rich_text"}
ELEMENT_TYPES = {"button", "plain_text_input", "static_select", "datepicker", "overflow"}


def _text_obj(obj, where: str, limit: int, errors: list, *, plain_only: bool = False) -> None:
    if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
        errors.append(f"{where}: not a text object")
        return
    if plain_only and obj["type"] != "plain_text":
        errors.append(f"{where}: must be plain_text")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        errors.append(f"{where}: empty text")
    elif len(text) > limit:
        errors.append(f"{where}: text longer than {limit} ({len(text)})")


def validate_blocks(blocks, errors: list, *, surface: str = "message") -> None:
    if not isinstance(blocks, list):
        errors.append("blocks: not a list")
        return
    if len(blocks) > (50 if surface == "message" else 100):
        errors.append("blocks: too many")
    action_ids: set[str] = set()
    block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        where = f"blocks[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in BLOCK_TYPES:
            errors.append(f"{where}: unknown block type {kind!r}")
            continue
        if "block_id" in block:
            if block["block_id"] in block_ids:
                errors.append(f"{where}: duplicate block_id {block['block_id']!r}")
            block_ids.add(block["block_id"])
        if kind == "header":
            _text_obj(block.get("text"), where + ".text", 150, errors, plain_only=True)
        elif kind == "section":
            if "text" not in block and "fields" not in block:
                errors.append(f"{where}: section needs text or fields")
            if "text" in block:
                _text_obj(block["text"], where + ".text", 3000, errors)
            fields = block.get("fields", [])
            if len(fields) > 10:
                errors.append(f"{where}: more than 10 fields")
            for j, f in enumerate(fields):
                _text_obj(f, f"{where}.fields[{j}]", 2000, errors)
        elif kind == "context":
            elements = block.get("elements", [])
            if not elements or len(elements) > 10:
                errors.append(f"{where}: context needs 1..10 elements")
            for j, el in enumerate(elements):
                _text_obj(el, f"{where}.elements[{j}]", 3000, errors)
        elif kind == "actions":
            elements = block.get("elements", [])
            if not elements or len(elements) > 25:
                errors.append(f"{where}: actions needs 1..25 elements")
            for j, el in enumerate(elements):
                _element(el, f"{where}.elements[{j}]", errors, action_ids)
        elif kind == "input":
            if surface != "modal":
                errors.append(f"{where}: input blocks belong in modals")
            _text_obj(block.get("label"), where + ".label", 2000, errors, plain_only=True)
            _element(block.get("element"), where + ".element", errors, action_ids)


def _element(el, where: str, errors: list, action_ids: set) -> None:
    if not isinstance(el, dict) or el.get("type") not in ELEMENT_TYPES:
        errors.append(f"{where}: unknown element")
        return
    action_id = el.get("action_id")
    if action_id is not None:
        if len(action_id) > 255:
            errors.append(f"{where}: action_id too long")
        if action_id in action_ids:
            errors.append(f"{where}: duplicate action_id {action_id!r}")
        action_ids.add(action_id)
    if el["type"] == "button":
        _text_obj(el.get("text"), where + ".text", 75, errors, plain_only=True)
        if len(el.get("value", "")) > 2000:
            errors.append(f"{where}: value too long")
        if el.get("style") not in (None, "primary", "danger"):
            errors.append(f"{where}: bad style")


class SlackStandIn:
    def __init__(self, token: str, users: dict[str, dict]):
        self.token = token
        self.users = users  # user id -> users.info "user" object
        self.calls: list[dict] = []
        self.errors: list[str] = []
        self.messages: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ts = 1700000000.000100
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, data: dict) -> None:
                body = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, params: dict) -> None:
                method = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1]
                auth = self.headers.get("Authorization", "")
                self._answer(standin.handle(method, auth, params))

            def do_GET(self):
                query = urllib.parse.urlsplit(self.path).query
                self._handle({k: v[0] for k, v in urllib.parse.parse_qs(query).items()})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                ctype = self.headers.get("Content-Type", "")
                if "json" in ctype:
                    params = json.loads(raw or "{}")
                else:
                    params = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
                query = urllib.parse.urlsplit(self.path).query
                params.update({k: v[0] for k, v in urllib.parse.parse_qs(query).items()})
                self._handle(params)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "SlackStandIn":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()

    # -- the API --------------------------------------------------------------------------

    def handle(self, method: str, auth: str, params: dict) -> dict:
        received = time.time()
        for key in ("blocks", "view"):
            if isinstance(params.get(key), str):
                try:
                    params[key] = json.loads(params[key])
                except json.JSONDecodeError:
                    params[key] = None
        errors: list[str] = []
        answer: dict = {"ok": True}
        if auth != f"Bearer {self.token}":
            answer = {"ok": False, "error": "invalid_auth"}
            errors.append(f"{method}: wrong or missing bot token")
        elif method == "auth.test":
            answer = {"ok": True, "team_id": "T0001", "user_id": "UBOT", "bot_id": "BBOT", "team": "jitgate-test"}
        elif method == "chat.postMessage":
            self._require(method, params, ("channel",), errors)
            if not params.get("text") and not params.get("blocks"):
                errors.append("chat.postMessage: text or blocks required")
            if params.get("blocks") is not None:
                validate_blocks(params["blocks"], errors)
            if not errors:
                with self._lock:
                    self._ts += 1
                    ts = f"{self._ts:.6f}"
                channel = "C" + str(params["channel"]).lstrip("#").upper()[:10] if str(params["channel"]).startswith("#") else params["channel"]
                self.messages[(channel, ts)] = params
                answer = {"ok": True, "channel": channel, "ts": ts, "message": {"ts": ts}}
        elif method == "chat.update":
            self._require(method, params, ("channel", "ts"), errors)
            if params.get("blocks") is not None:
                validate_blocks(params["blocks"], errors)
            if not errors and (params["channel"], params["ts"]) not in self.messages:
                answer = {"ok": False, "error": "message_not_found"}
                errors.append("chat.update: message_not_found")
            elif not errors:
                self.messages[(params["channel"], params["ts"])] = params
                answer = {"ok": True, "channel": params["channel"], "ts": params["ts"]}
        elif method == "chat.postEphemeral":
            self._require(method, params, ("channel", "user"), errors)
            if not params.get("text") and not params.get("blocks"):
                errors.append("chat.postEphemeral: text or blocks required")
            answer = {"ok": True, "message_ts": "1.0"}
        elif method == "users.info":
            self._require(method, params, ("user",), errors)
            user = self.users.get(params.get("user"))
            answer = {"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"}
        elif method == "views.open":
            self._require(method, params, ("trigger_id", "view"), errors)
            view = params.get("view") or {}
            if view.get("type") != "modal":
                errors.append("views.open: view.type must be modal")
            _text_obj(view.get("title"), "view.title", 24, errors, plain_only=True)
            if any(b.get("type") == "input" for b in view.get("blocks", [])) and not view.get("submit"):
                errors.append("views.open: a modal with inputs needs submit")
            if len(view.get("private_metadata", "")) > 3000:
                errors.append("views.open: private_metadata too long")
            validate_blocks(view.get("blocks", []), errors, surface="modal")
            answer = {"ok": True, "view": {"id": "V123", **view}}
        else:
            errors.append(f"unexpected method {method}")
            answer = {"ok": False, "error": "unknown_method"}
        if errors and answer.get("ok"):
            answer = {"ok": False, "error": "invalid_arguments", "response_metadata": {"messages": errors}}
        with self._cond:
            self.calls.append({"method": method, "params": params, "at": received, "ok": answer.get("ok"), "errors": errors})
            self.errors.extend(errors)
            self._cond.notify_all()
        return answer

    @staticmethod
    def _require(method: str, params: dict, names, errors: list) -> None:
        for name in names:
            if not params.get(name):
                errors.append(f"{method}: missing {name}")

    # -- for tests ------------------------------------------------------------------------

    def find(self, method: str, predicate=lambda c: True) -> list[dict]:
        with self._lock:
            return [c for c in self.calls if c["method"] == method and predicate(c)]

    def wait_for(self, method: str, predicate=lambda c: True, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [c for c in self.calls if c["method"] == method and predicate(c)]
                if found:
                    return found[-1]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"Slack stand-in did not receive {method} within {timeout}s; calls: "
                                         f"{[c['method'] for c in self.calls]}")
                self._cond.wait(remaining)


def slack_user(user_id: str, email: str, **extra) -> dict:
    return {"id": user_id, "team_id": "T0001", "name": email.split("@")[0], "deleted": False, "is_bot": False, "is_restricted": False,
            "is_ultra_restricted": False, "is_email_confirmed": True, "profile": {"email": email, "real_name": email}, **extra}


def posted_approval_id(call: dict) -> str | None:
    for block in call["params"].get("blocks") or []:
        if block.get("type") == "actions":
            return block["elements"][0]["value"]
    return None
