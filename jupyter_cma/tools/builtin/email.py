"""The `email` built-in family: `send_email`, `email_list`, `email_read`, and the inbound listener (`mail_listener`).

Sending goes through the operator's SMTP server (`c.EmailTools.smtp_host`, aiosmtplib), from `mail_from`, to
recipients the session's egress policy allows (`"email": {"recipients": [...]}` of its deciding policy; none by
default). The SMTP connection is the server's own, to that one configured relay: the policy decides who may receive
mail, not which host is reached. Every message sent, failed or refused is a row of `mail_messages` with the session,
its Message-ID and threading headers, so a reply to it (received by the listener) continues the same session.

`email_list` and `email_read` read the session's own rows only (in and out). The family is available when the
server sends (`smtp_host` and `mail_from`) or receives (`inbound_domain`): an inbound-only server still gives agents
the mail that started their sessions; `send_email` then says sending is not configured.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from traitlets import Enum, Int, List, Unicode

from ...egress.policy.errors import PolicyError
from ...egress.policy.mail import parse_address
from ...egress.secrets import SecretStoreError
from .base import BuiltinFamily, CallContext, Content, ServerParts, ToolError, ToolSpec
from .mail_listener import MAX_BODY_CHARS, MailListener, agent_slug, parse_senders

MAX_SUBJECT_CHARS = 500
MAX_REFERENCES = 20
SMTP_PORTS = {"none": 25, "starttls": 587, "tls": 465}  # the usual port of each smtp_tls

SEND = ToolSpec(
    name="send_email",
    description=(
        "Send an email (plain text) from this server's address. Recipients must be allowed by the session's egress "
        "policy; a refused recipient is named with the reason and nothing is sent. To answer a mail, pass its id from "
        "email_list or its Message-ID as reply_to: the answer then threads, and replies to it come back to this session."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "to": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                   "description": "Recipient addresses, such as [\"ops@example.com\"]."},
            "subject": {"type": "string", "description": "The subject line."},
            "body": {"type": "string", "description": "The message text."},
            "reply_to": {"type": ["integer", "string"],
                         "description": "Optional: the id (email_list) or Message-ID of this session's mail being answered."},
        },
        "required": ["to", "subject", "body"],
        "additionalProperties": False,
    },
)
LIST = ToolSpec(
    name="email_list",
    description="List this session's email, newest first: mail that started or continued it and mail it sent (id, "
                "direction, status, date, from, to, subject). Read one with email_read.",
    input_schema={"type": "object", "properties": {
        "limit": {"type": "integer", "minimum": 1, "maximum": 200, "description": "At most this many (default 50)."}},
        "additionalProperties": False},
)
READ = ToolSpec(
    name="email_read",
    description="Read one of this session's email messages by its id from email_list: headers and text.",
    input_schema={"type": "object", "properties": {"id": {"type": "integer", "description": "The id from email_list."}},
                  "required": ["id"], "additionalProperties": False},
)


class EmailTools(BuiltinFamily):
    """Email out (SMTP, recipients allowed by the egress policy) and in (an SMTP listener that starts sessions)."""

    name = "email"
    title = "Email"
    summary = ("Send mail to the recipients the session's egress policy allows, read the session's mail, and receive "
               "mail that starts or continues sessions; runs in the Jupyter server.")
    requires = ("an SMTP server to send through (c.EmailTools.smtp_host, mail_from) and/or a domain to receive mail for "
                "(c.EmailTools.inbound_domain)")

    smtp_host = Unicode("", config=True, help="The SMTP server mail is sent through (empty: this server sends no mail).")
    smtp_port = Int(0, config=True, help="Its port; 0 means the usual one for smtp_tls (none 25, starttls 587, tls 465).")
    smtp_tls = Enum(["none", "starttls", "tls"], "starttls", config=True,
                    help="How the SMTP connection is protected: \"starttls\" (default: upgrade, required), \"tls\" "
                    "(TLS from the start, port 465) or \"none\" (plain; for a relay on loopback or a trusted network).")
    smtp_ca_file = Unicode("", config=True, help="A CA bundle (PEM) to verify the SMTP server's certificate with, for a "
                           "relay with a private CA (empty: the system's CAs).")
    smtp_username = Unicode("", config=True, help="The SMTP login (empty: no AUTH).")
    smtp_password_secret = Unicode("", config=True, help="The NAME of the egress secret holding the SMTP password "
                                   "(PUT cma/api/egress/secrets/{name}); the value never appears in settings, logs or results.")
    mail_from = Unicode("", config=True, help="The From address of mail agents send, such as agents@example.com.")
    max_recipients = Int(10, config=True, help="At most this many recipients per send_email call.")
    inbound_domain = Unicode("", config=True, help="Receive mail for <agent>@this domain (empty: no listener). The "
                             "agent part is an agent's id, or the slug of its name when one agent has it.")
    inbound_host = Unicode("127.0.0.1", config=True, help="The address the inbound SMTP listener binds.")
    inbound_port = Int(2525, config=True, help="The inbound SMTP listener's port (0: any free port).")
    inbound_max_bytes = Int(1_000_000, config=True, help="Larger inbound messages are refused (552).")
    inbound_senders = List(Unicode(), default_value=[], config=True,
                           help="Senders whose mail is accepted: address patterns such as \"*@example.org\" or "
                           "\"ada@example.com\" (both the envelope sender and the header From must match). Empty "
                           "refuses every sender.")
    inbound_sessions_per_hour = Int(20, config=True, help="At most this many new sessions per sender (the header From) "
                                    "in any hour; more mail is answered 451 (try later). Replies in a thread the sender "
                                    "takes part in do not count. 0: no limit.")
    inbound_username = Unicode("", config=True, help="When set, the inbound listener requires SMTP AUTH with this user "
                               "and the password in inbound_password_secret (for the relay that hands it the mail).")
    inbound_password_secret = Unicode("", config=True, help="The NAME of the egress secret holding the inbound SMTP "
                                      "password (PUT cma/api/egress/secrets/{name}); required with inbound_username.")
    inbound_tls_cert = Unicode("", config=True, help="A PEM certificate (chain) for the inbound listener: STARTTLS is "
                               "then offered and required. Required for a login on an address other than loopback.")
    inbound_tls_key = Unicode("", config=True, help="The PEM private key of inbound_tls_cert.")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.listener: MailListener | None = None
        self.inbound_error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, parts: ServerParts) -> None:
        """Keep the server's parts; start the inbound listener when `inbound_domain` is set."""
        await super().start(parts)
        if self.smtp_host and self.smtp_username and self.smtp_tls == "none" and self.smtp_host not in ("127.0.0.1", "localhost", "::1"):
            self.log.warning("jupyter-cma: c.EmailTools sends the SMTP password to %s without TLS; set smtp_tls", self.smtp_host)
        if not self.inbound_domain:
            return
        try:
            senders = parse_senders(self.inbound_senders)
            domain = parse_address(f"postmaster@{self.inbound_domain}").rpartition("@")[2]
            auth, tls = self._inbound_login()
        except (ValueError, PolicyError) as exc:
            self.inbound_error = f"c.EmailTools inbound settings are not valid: {exc}"
            self.log.error("jupyter-cma: %s", self.inbound_error)
            return
        listener = MailListener(parts=parts, host=self.inbound_host, port=self.inbound_port, domain=domain,
                                max_bytes=self.inbound_max_bytes, senders=senders, log=self.log,
                                sessions_per_hour=max(0, self.inbound_sessions_per_hour), auth=auth, tls_context=tls)
        try:
            await listener.start()
        except OSError as exc:
            self.inbound_error = (f"the inbound mail listener cannot listen on {self.inbound_host}:{self.inbound_port} "
                                  f"({exc.strerror or exc}); set c.EmailTools.inbound_port to a free port")
            self.log.error("jupyter-cma: %s", self.inbound_error)
            return
        if not senders:
            self.log.warning("jupyter-cma: c.EmailTools.inbound_senders is empty, so every inbound mail is refused")
        if auth is None:
            self.log.warning("jupyter-cma: the inbound mail listener on %s:%s asks for no login: any process that can "
                             "connect to it can mail the agents as an allowed sender (see docs/email.md)", self.inbound_host,
                             listener.port)
        elif not self._secret_stored(auth[1]):
            self.log.warning("jupyter-cma: the inbound SMTP password secret %r is not stored, so every login is refused "
                             "until it is (PUT cma/api/egress/secrets/%s)", auth[1], auth[1])
        self.listener = listener

    def _secret_stored(self, name: str) -> bool:
        assert self.parts is not None
        try:
            return self.parts.secrets.get(name) is not None
        except SecretStoreError:
            return False

    def _inbound_login(self) -> tuple[tuple[str, str] | None, ssl.SSLContext | None]:
        """The listener's login (username, password secret name) and TLS context; ValueError says which setting is wrong."""
        if bool(self.inbound_username) != bool(self.inbound_password_secret):
            raise ValueError("set both inbound_username and inbound_password_secret (or neither)")
        if bool(self.inbound_tls_cert) != bool(self.inbound_tls_key):
            raise ValueError("set both inbound_tls_cert and inbound_tls_key (or neither)")
        tls = None
        if self.inbound_tls_cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # a server context: no client certificates
            try:
                tls.load_cert_chain(self.inbound_tls_cert, self.inbound_tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"inbound_tls_cert/inbound_tls_key cannot be loaded ({exc})") from None
        auth = (self.inbound_username, self.inbound_password_secret) if self.inbound_username else None
        if auth is not None and tls is None and not _loopback(self.inbound_host):
            raise ValueError(f"a login on {self.inbound_host} would cross the network in clear text; set inbound_tls_cert "
                             "and inbound_tls_key, or listen on loopback")
        return auth, tls

    async def close(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            await listener.close()

    # ------------------------------------------------------------------ the contract

    def sending(self) -> str | None:
        """None when send_email can send; else why not, with the setting that fixes it."""
        if not self.smtp_host:
            return "this server sends no mail: c.EmailTools.smtp_host is not set (see docs/email.md)"
        if not self.mail_from:
            return "c.EmailTools.mail_from is not set, so mail would have no sender (see docs/email.md)"
        try:
            parse_address(self.mail_from)
        except PolicyError as exc:
            return f"c.EmailTools.mail_from is not one address: {exc}"
        return None

    def unavailable(self) -> str | None:
        sending = self.sending() if self.smtp_host else None
        if sending:
            return sending
        if not self.smtp_host and not self.inbound_domain:
            return ("set c.EmailTools.smtp_host and mail_from to send mail, and/or c.EmailTools.inbound_domain to "
                    "receive it (see docs/email.md)")
        if not self.smtp_host and self.inbound_error:
            return self.inbound_error
        return None

    def tools(self, settings: Mapping[str, Any]) -> list[ToolSpec]:
        # Always all three, so an agent's definitions do not change when the server's mail settings do.
        return [SEND, LIST, READ]

    async def call(self, ctx: CallContext, tool: str, input: dict[str, Any]) -> Content:
        if self.parts is None:
            raise ToolError("the email tools are not started on this server; try again shortly")
        if tool == "send_email":
            return await self._send(ctx, input)
        if tool == "email_list":
            return self._list(ctx, input)
        if tool == "email_read":
            return self._read(ctx, input)
        raise ToolError(f"the email family has no tool {tool!r}; it has send_email, email_list and email_read")

    # ------------------------------------------------------------------ send_email

    async def _send(self, ctx: CallContext, input: dict[str, Any]) -> str:
        assert self.parts is not None
        problem = self.sending()
        if problem:
            raise ToolError(problem)
        to, subject, body = _recipients(input.get("to"), self.max_recipients), input.get("subject"), input.get("body")
        if not isinstance(subject, str) or len(subject) > MAX_SUBJECT_CHARS or any(c in subject for c in "\r\n\0"):
            raise ToolError(f"subject must be one line of at most {MAX_SUBJECT_CHARS} characters")
        if not isinstance(body, str) or len(body) > MAX_BODY_CHARS:
            raise ToolError(f"body must be text of at most {MAX_BODY_CHARS} characters")
        answered = self._answered(ctx.session_id, input.get("reply_to"))
        store = self.parts.store
        effective = self.parts.policies.resolve(self.parts.policies.context_for(ctx.session_id))
        decisions = [(address, effective.decide_recipient(address)) for address in to]
        refused = [(address, d) for address, d in decisions if not d.allowed]
        if refused:
            reason = "; ".join(f"{address}: {d.reason} ({d.rule})" for address, d in refused)
            store.add_mail(direction="out", status="refused", reason=reason, session_id=ctx.session_id,
                           agent_id=ctx.agent_id, sender=self.mail_from, recipients=to, subject=subject, size=len(body))
            self.log.info("jupyter-cma: send_email of session %s refused by its egress policy: %s", ctx.session_id, reason)
            raise ToolError(f"refused by the session's egress policy, nothing was sent: {reason}")

        message = EmailMessage()
        sender_domain = parse_address(self.mail_from).rpartition("@")[2]
        message_id = make_msgid(domain=sender_domain)
        message["From"] = self.mail_from
        message["To"] = ", ".join(to)
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = message_id
        reply_address = self._agent_address(ctx.agent_id)
        if reply_address:
            message["Reply-To"] = reply_address  # replies reach the listener, which threads them to this session
        in_reply_to, refs = None, []
        if answered is not None:
            in_reply_to = answered["message_id"]
            refs = [*answered.get("refs", []), in_reply_to][-MAX_REFERENCES:]
            message["In-Reply-To"] = in_reply_to
            message["References"] = " ".join(refs)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: autoresponders should not answer it
        message.set_content(body)
        raw_size = len(message.as_bytes())

        def record(status: str, reason: str | None) -> int:
            return store.add_mail(direction="out", status=status, reason=reason, session_id=ctx.session_id,
                                  agent_id=ctx.agent_id, message_id=message_id, in_reply_to=in_reply_to, refs=refs,
                                  sender=self.mail_from, recipients=to, subject=subject, body=body, size=raw_size)

        try:
            rejected = await self._deliver(message, to)
        except ToolError as exc:
            record("failed", str(exc))
            raise
        if len(rejected) == len(to):
            reason = "the SMTP server refused every recipient: " + "; ".join(rejected)
            record("failed", reason)
            raise ToolError(reason)
        mail_id = record("sent", ("refused by the SMTP server: " + "; ".join(rejected)) if rejected else None)
        self.log.info("jupyter-cma: session %s sent mail %s (%s) to %s", ctx.session_id, mail_id, message_id, ", ".join(to))
        note = f"; the SMTP server refused {'; '.join(rejected)}" if rejected else ""
        return f"Sent to {', '.join(a for a in to if not any(r.startswith(a) for r in rejected))} (mail id {mail_id}, Message-ID {message_id}){note}."

    async def _deliver(self, message: EmailMessage, to: list[str]) -> list[str]:
        """Send through the configured SMTP server; the recipients it refused (each with its answer)."""
        import aiosmtplib  # imported when mail is sent: most servers never do

        password = None
        if self.smtp_password_secret:
            assert self.parts is not None
            try:
                secret = self.parts.secrets.get(self.smtp_password_secret)
            except SecretStoreError:
                raise ToolError("the egress secret store cannot be read, so the SMTP password is not available; the "
                                "operator sees why in GET cma/api/status") from None
            if secret is None:
                raise ToolError(f"the SMTP password secret {self.smtp_password_secret!r} is not stored on this server; "
                                f"the operator sets it with PUT cma/api/egress/secrets/{self.smtp_password_secret}")
            password = secret.reveal()
        context = None
        if self.smtp_tls != "none":
            context = ssl.create_default_context(cafile=self.smtp_ca_file or None)
        try:
            errors, _ = await aiosmtplib.send(
                message, sender=parse_address(self.mail_from), recipients=to, hostname=self.smtp_host,
                port=self.smtp_port or SMTP_PORTS[self.smtp_tls], username=self.smtp_username or None, password=password,
                use_tls=self.smtp_tls == "tls", start_tls=True if self.smtp_tls == "starttls" else False,
                tls_context=context, timeout=max(1.0, self.timeout - 1),
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return [f"{r.recipient} ({r.code} {r.message})" for r in exc.recipients]
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise ToolError(f"the SMTP server refused the login of c.EmailTools.smtp_username ({exc.code} {exc.message}); "
                            "the operator checks the user and the password secret") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise ToolError(f"the SMTP server refused the message: {exc.code} {exc.message}") from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise ToolError(f"the SMTP server {self.smtp_host} could not be used ({type(exc).__name__}: {exc}); try again "
                            "later (if it persists, the operator checks the c.EmailTools.smtp_* settings)") from None
        return [f"{address} ({response.code} {response.message})" for address, response in errors.items()]

    def _answered(self, session_id: str, reply_to: object) -> dict[str, Any] | None:
        """The session's own mail row a send_email answers (by id or Message-ID), or None."""
        if reply_to is None or reply_to == "":
            return None
        assert self.parts is not None
        rows = self.parts.store.session_mail(session_id, limit=500)
        if isinstance(reply_to, int) and not isinstance(reply_to, bool):
            found = next((r for r in rows if r["id"] == reply_to), None)
        elif isinstance(reply_to, str):
            wanted = reply_to.strip()
            wanted = wanted if wanted.startswith("<") else f"<{wanted}>"
            found = next((r for r in rows if r.get("message_id") == wanted), None)
            if found is None and reply_to.strip().isdigit():
                found = next((r for r in rows if r["id"] == int(reply_to.strip())), None)
        else:
            raise ToolError("reply_to is the id (from email_list) or the Message-ID of this session's mail")
        if found is None or not found.get("message_id"):
            raise ToolError(f"this session has no mail {reply_to!r} to answer; email_list() shows its mail")
        return found

    def _agent_address(self, agent_id: str | None) -> str | None:
        """The address the listener takes for this agent, when this server receives mail."""
        if self.listener is None or not agent_id:
            return None
        assert self.parts is not None
        agent = self.parts.store.agent(agent_id) or {}
        slug = agent_slug(agent.get("name"))
        if slug:  # the name reads better, when it names this agent alone
            named, _ = self.listener.agent_for(f"{slug}@{self.listener.domain}")
            if named is not None and named["id"] == agent_id:
                return f"{slug}@{self.listener.domain}"
        return f"{agent_id}@{self.listener.domain}"

    # ------------------------------------------------------------------ email_list, email_read

    def _list(self, ctx: CallContext, input: dict[str, Any]) -> str:
        assert self.parts is not None
        limit = input.get("limit", 50)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 200:
            raise ToolError("limit must be a whole number from 1 to 200")
        rows = self.parts.store.session_mail(ctx.session_id, limit=limit)
        if not rows:
            return "This session has no email yet."
        lines = [f"{len(rows)} message(s), newest first:"]
        for row in rows:
            lines.append(f"#{row['id']} {row['direction']} {row['status']} {_when(row['at'])} from {row.get('sender') or '?'} "
                         f"to {', '.join(row.get('recipients') or []) or '?'}: {row.get('subject') or '(no subject)'}"
                         + (f" [{row['reason']}]" if row.get("reason") else ""))
        return "\n".join(lines)

    def _read(self, ctx: CallContext, input: dict[str, Any]) -> str:
        assert self.parts is not None
        mail_id = input.get("id")
        if isinstance(mail_id, str) and mail_id.strip().lstrip("#").isdigit():
            mail_id = int(mail_id.strip().lstrip("#"))
        if not isinstance(mail_id, int) or isinstance(mail_id, bool):
            raise ToolError("id is the number email_list shows for a message")
        row = self.parts.store.mail(mail_id)
        if row is None or row.get("session_id") != ctx.session_id:  # another session's mail does not exist for this one
            raise ToolError(f"this session has no mail {mail_id}; email_list() shows its mail")
        lines = [f"Mail #{row['id']} ({row['direction']}, {row['status']}, {_when(row['at'])})",
                 f"From: {row.get('sender') or '?'}", f"To: {', '.join(row.get('recipients') or [])}",
                 f"Subject: {row.get('subject') or ''}", f"Message-ID: {row.get('message_id') or '-'}"]
        if row.get("in_reply_to"):
            lines.append(f"In-Reply-To: {row['in_reply_to']}")
        if row.get("reason"):
            lines.append(f"Note: {row['reason']}")
        lines += ["", row.get("body") or "(no text kept)"]
        return "\n".join(lines)


def _recipients(value: object, most: int) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ToolError("to is a list of addresses, such as [\"ops@example.com\"]")
    if len(value) > most:
        raise ToolError(f"at most {most} recipients per message; send several messages")
    addresses: list[str] = []
    for raw in value:
        try:
            address = parse_address(raw)
        except PolicyError as exc:
            raise ToolError(f"to: {exc}") from None
        if address not in addresses:
            addresses.append(address)
    return addresses


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _when(at: float) -> str:
    return datetime.fromtimestamp(at or time.time(), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
