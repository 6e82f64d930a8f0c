"""The console's create and edit form, for every schedule kind.

The form's fields are forsun's wire fields (key, second ... week, count,
action, params) plus cron, at and timezone; the plan is built by
:meth:`ForsunService.build_kind`, the same path the APIs use. "Preview"
renders the form again with the next firings; "Save" stores the plan.
Errors are shown next to the field they are about.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import tornado.web

from forsun_box import errors
from forsun_box.api.console import text
from forsun_box.api.console.base import ConsoleHandler
from forsun_box.api.console.plans import PREVIEW_COUNT, input_value, parse_local
from forsun_box.plan import AT, CALENDAR, CRON, DELAY, FIELDS, KINDS, Plan

log = logging.getLogger("forsun_box.console")

FORM_FIELDS = ("key", "mode", *FIELDS, "count", "cron", "at", "timezone", "action", "params")
#: the fields each schedule kind reads (the form shows only these, data-modes in form.html);
#: what is left in another kind's fields is ignored, never an error nobody can see
MODE_FIELDS: dict[str, frozenset[str]] = {
    DELAY: frozenset({*FIELDS, "count"}),
    CALENDAR: frozenset({*FIELDS, "count", "timezone"}),
    CRON: frozenset({"cron", "count", "timezone"}),
    AT: frozenset({"at", "timezone"}),
}
ALWAYS_SHOWN = frozenset({"key", "mode", "action", "params"})


@dataclass
class Form:
    """The form's raw text values and the errors found in them, by field name."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    general: str = ""

    def get(self, name: str) -> str:
        return self.values.get(name, "")


def form_from_plan(plan: Plan, tz: ZoneInfo) -> Form:
    """The edit form of a stored plan; secret params show masked."""
    values = {
        "key": plan.key,
        "mode": plan.kind,
        "count": str(plan.count),
        "cron": plan.cron,
        "timezone": plan.timezone,
        "action": plan.action,
    }
    for f in FIELDS:
        v = getattr(plan, f)
        values[f] = "" if v == -1 else str(v)
    if plan.kind == AT:
        values["at"] = input_value(plan.anchor_ms, ZoneInfo(plan.timezone) if plan.timezone else tz)
    values["params"] = "\n".join(f"{k}={v}" for k, v in text.mask_params(plan.params).items())
    return Form(values)


def parse_params(raw: str) -> dict[str, str]:
    """``name=value`` lines, or a JSON object; raises ValueError with a reason."""
    raw = raw.strip()
    if not raw:
        return {}
    if raw.startswith("{"):
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"not a valid JSON object: {e}") from None
        if not isinstance(obj, dict):
            raise ValueError("expected a JSON object")
        return obj  # type: ignore[no-any-return]
    out: dict[str, str] = {}
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"line {n}: write name=value")
        out[name.strip()] = value
    return out


def _field_of(message: str) -> str:
    """The form field an engine error message is about ("" when none)."""
    lowered = message.lower()
    for name in ("cron", "count", "key", "params", "action", "zone", *FIELDS):
        if lowered.startswith(name) or f" {name}" in lowered:
            return "timezone" if name == "zone" else name
    return ""


def build_from_form(handler: ConsoleHandler, form: Form, original: Plan | None) -> Plan | None:
    """Validate ``form`` into a plan, or fill ``form.errors`` and return None."""
    console = handler.console
    v = form.values
    mode = v.get("mode", DELAY)
    if mode not in KINDS:
        form.errors["mode"] = "Choose a schedule kind."
        return None
    used = MODE_FIELDS[mode]
    nums: dict[str, Any] = {}
    for name in (*FIELDS, "count"):
        if name not in used:
            continue
        raw = v.get(name, "").strip()
        if raw:
            try:
                nums[name] = int(raw)
            except ValueError:
                form.errors[name] = "Write a whole number."
    try:
        params = parse_params(v.get("params", ""))
    except ValueError as e:
        form.errors["params"] = f"Params: {e}."
        params = {}
    if original is not None:
        # a masked secret left as shown keeps its stored value
        for k, val in list(params.items()):
            if val == text.MASK and k in original.params:
                params[k] = original.params[k]
    tz_name = v.get("timezone", "").strip() if "timezone" in used else ""
    at_ms = None
    if mode == AT:
        try:
            zone = ZoneInfo(tz_name) if tz_name else console.tz
        except Exception:
            zone = console.tz  # the zone's own error is reported by the build below
        try:
            at_ms = parse_local(v.get("at", ""), zone)
        except ValueError:
            form.errors["at"] = "Give a date and time, YYYY-MM-DD HH:MM:SS."
    if mode == DELAY and not any(nums.get(f, 0) > 0 for f in FIELDS):
        form.errors.setdefault("second", "Give the interval: at least one field above 0.")
    if form.errors:
        return None
    try:
        return console.service.build_kind(
            kind=mode,
            key=v.get("key", "").strip(),
            fields=nums,
            count=nums.get("count", 0),
            action=v.get("action", "shell"),
            params=params,
            cron=v.get("cron", "").strip() if mode == CRON else "",
            at_ms=at_ms,
            timezone=tz_name,
        )
    except errors.ForsunBoxError as e:
        name = _field_of(e.message)
        if name not in used and name not in ALWAYS_SHOWN:
            name = ""  # a field this kind hides: the message goes above the form
        message = e.message[:1].upper() + e.message[1:]
        if isinstance(e, errors.TimeNeverArrives):
            name = {AT: "at", CRON: "cron"}.get(mode, "second")
            message = "This schedule never fires after now."
        if name:
            form.errors[name] = message
        else:
            form.general = message
        return None


class FormHandler(ConsoleHandler):
    """``/plans/new`` and ``/plan/edit?key=K``: GET shows the form, POST previews or saves."""

    def initialize(self, console: Any, edit: bool = False) -> None:  # type: ignore[override]
        super().initialize(console)
        self.edit = edit

    async def _original(self) -> Plan | None:
        if not self.edit:
            return None
        key = self.get_argument("key", "")
        if not key:
            raise tornado.web.HTTPError(404, f"No plan with key {key!r}.")
        try:
            return await self.console.service.get(key)
        except errors.PlanNotFound:
            raise tornado.web.HTTPError(404, f"No plan with key {key!r}.") from None

    @tornado.web.authenticated
    async def get(self) -> None:
        original = await self._original()
        if original is not None:
            form = form_from_plan(original, self.console.tz)
        else:
            form = Form(
                {
                    "mode": self.get_query_argument("mode", DELAY),
                    "action": "shell",
                    "count": "1",
                    "second": "60",
                }
            )
        self._show(form, original, None)

    @tornado.web.authenticated
    async def post(self) -> None:
        original = await self._original()
        form = Form({name: self.get_body_argument(name, "") for name in FORM_FIELDS})
        if original is not None:
            form.values["key"] = original.key  # the key of a plan is not edited
        plan = build_from_form(self, form, original)
        if plan is None or self.get_body_argument("do", "save") == "preview":
            if plan is None:
                self.set_status(400)
            self._show(form, original, plan)
            return
        if original is None and form.get("key").strip():
            try:
                await self.console.service.get(plan.key)
            except errors.PlanNotFound:
                pass
            else:
                form.errors["key"] = "A plan with this key exists; open it to edit it."
                self.set_status(409)
                self._show(form, original, None)
                return
        if original is not None and original.paused:
            plan.paused = True  # an edit does not resume a paused plan
        await self.console.service.create([plan])
        self.console.forget_counts()
        done = "saved" if original is not None else "created"
        self.redirect("/plan?" + urllib.parse.urlencode({"key": plan.key, "done": done}))

    def _show(self, form: Form, original: Plan | None, preview: Plan | None) -> None:
        console = self.console
        firings: list[int] = []
        preview_tz = console.tz
        if preview is not None:
            preview_tz = ZoneInfo(preview.timezone) if preview.timezone else console.tz
            firings = preview.upcoming(PREVIEW_COUNT, preview_tz)
        actions = sorted(console.service.known_actions())
        self.page(
            "form.html",
            active="new" if original is None else "plans",
            form=form,
            original=original,
            preview=preview,
            firings=firings,
            preview_tz=preview_tz,
            actions=actions,
            kinds=KINDS,
            fields=FIELDS,
        )


def routes(kw: dict[str, Any]) -> list[Any]:
    return [
        (r"/plans/new", FormHandler, kw),
        (r"/plan/edit", FormHandler, {**kw, "edit": True}),
    ]
