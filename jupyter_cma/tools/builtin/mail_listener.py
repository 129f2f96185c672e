"""The inbound side of the email built-ins: an SMTP listener (aiosmtpd) that turns mail into sessions.

`MailListener` serves SMTP on the Jupyter server's own event loop. Mail to `<alias>@<domain>` — the alias is an
agent's id, or the slug of its stored name when exactly one agent has it, and the agent must have the `email`
built-in enabled — starts a session of that agent with the mail as its first user message. A reply whose
In-Reply-To or References names a Message-ID this server recorded for a session of the same agent is sent to that
session as a user message instead, but only when its sender took part in that session's mail (sent mail the session
accepted, or received mail it sent): Message-IDs travel in every quoted header, so knowing one must not let another
allowed sender speak in someone else's session; such a reply starts a session of its own. Everything is recorded in
`mail_messages`: accepted mail with its session, refused mail (unknown address, sender outside the allow-list, too
large, a Message-ID delivered before, too many new sessions) with the reason and its headers only.

SMTP answers: 530 at MAIL FROM without a login when `auth` is set, 550 at MAIL FROM for a sender outside `senders`
(an empty list refuses every sender: fail closed), 550 at RCPT TO for an address that names no agent, 552 for a
message over `max_bytes` (at MAIL FROM when the client declares its SIZE, else at the end of DATA), 550 after DATA
when the header From is outside the allow-list, 250 for a message whose Message-ID was delivered to that agent
before (recorded as refused, not delivered again: the sending server must not retry it), and 451 (try again later)
when the sender started `sessions_per_hour` sessions in the last hour or no session could be started or continued.
"""

from __future__ import annotations

import asyncio
import email.policy
import hmac
import logging
import re
import ssl
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses, make_msgid
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from ...egress.policy.errors import PolicyError
from ...egress.policy.mail import AddressPattern, parse_address
from ...egress.secrets import SecretStoreError

if TYPE_CHECKING:
    from .base import ServerParts

MAX_BODY_CHARS = 50_000  # of a mail's text, in its first message and in its stored row
SESSIONS_WINDOW = 3600.0  # seconds: `sessions_per_hour` counts the sessions a sender started in this window
_MESSAGE_ID = re.compile(r"<[^<>\s]{1,500}>")
_SLUG_RUN = re.compile(r"[^a-z0-9]+")


def agent_slug(name: str | None) -> str:
    """An agent's name as the local part of its address: lower case, runs of other characters as one '-'."""
    return _SLUG_RUN.sub("-", (name or "").lower()).strip("-")[:64]


def message_ids(value: object) -> list[str]:
    """The `<…>` Message-IDs in a header value (In-Reply-To, References), in order, at most the last 50."""
    return _MESSAGE_ID.findall(str(value or ""))[-50:]


def parse_senders(patterns: Iterable[str]) -> tuple[AddressPattern, ...]:
    """The sender allow-list; ValueError naming every bad pattern."""
    parsed, problems = [], []
    for i, text in enumerate(patterns):
        try:
            parsed.append(AddressPattern.parse(text))
        except PolicyError as exc:
            problems.extend(f"inbound_senders[{i}]: {p}" for p in exc.problems)
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(parsed)


class _Text(HTMLParser):
    """The text of an HTML part, for mail that has no plain-text one."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "li", "tr", "h1", "h2", "h3"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


@dataclass
class ReadMail:
    """What the listener keeps of a message: its headers and its text."""

    sender: str | None  # the header From's address (canonical), else None
    sender_text: str  # the From header as written (display name and address)
    to: str
    subject: str
    date: str
    message_id: str | None
    in_reply_to: str | None
    references: list[str] = field(default_factory=list)
    text: str = ""
    attachments: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: bytes) -> ReadMail:
        """Read a message; headers that cannot be read are left empty, never an error."""
        msg = BytesParser(policy=email.policy.default).parsebytes(raw)

        def header(name: str) -> str:
            try:
                return " ".join(str(msg.get(name, "") or "").split())[:998]
            except Exception:  # a malformed header is left out, not fatal
                return ""

        sender_text = header("From")
        sender = None
        addresses = getaddresses([sender_text]) if sender_text else []
        if len(addresses) == 1:
            try:
                sender = parse_address(addresses[0][1])
            except PolicyError:
                sender = None
        in_reply_to = (message_ids(header("In-Reply-To")) or [None])[0]
        text, attachments = "", []
        if isinstance(msg, EmailMessage):
            text = _body_text(msg)
            for part in msg.iter_attachments():
                attachments.append(part.get_filename() or part.get_content_type())
        return cls(sender=sender, sender_text=sender_text, to=header("To"), subject=header("Subject"), date=header("Date"),
                   message_id=(message_ids(header("Message-ID")) or [None])[0], in_reply_to=in_reply_to,
                   references=message_ids(header("References")), text=text[:MAX_BODY_CHARS], attachments=attachments[:50])

    def thread(self) -> list[str]:
        """The Message-IDs this message answers: In-Reply-To first, then References newest first."""
        ids = ([self.in_reply_to] if self.in_reply_to else []) + list(reversed(self.references))
        return list(dict.fromkeys(ids))

    def as_user_message(self, recipient: str, *, reply: bool) -> str:
        """The text the session gets."""
        lead = ("A reply in this session's email thread:" if reply else f"An email to {recipient} started this session:")
        lines = [lead, f"From: {self.sender_text}", f"To: {self.to or recipient}"]
        if self.date:
            lines.append(f"Date: {self.date}")
        lines += [f"Subject: {self.subject}", f"Message-ID: {self.message_id}", "", self.text.strip() or "(no text)"]
        if self.attachments:
            lines += ["", f"[attachments not delivered: {', '.join(self.attachments)}]"]
        lines += ["", f"[email_list() shows this mail; answer it with send_email(..., reply_to=\"{self.message_id}\").]"]
        return "\n".join(lines)


def _body_text(msg: EmailMessage) -> str:
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
        if part is None:
            return ""
        content = part.get_content()
    except Exception:  # an undecodable body is delivered as no text
        return ""
    if not isinstance(content, str):
        return ""
    if part.get_content_subtype() == "html":
        parser = _Text()
        parser.feed(content)
        content = re.sub(r"\n\s*\n+", "\n\n", "".join(parser.parts))
    return content


class _ListenerSMTP(SMTP):
    """aiosmtpd's SMTP, telling the listener when it refuses a message for its size (aiosmtpd calls no hook then)."""

    _mail_arg: str | None = None

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._mail_arg = arg  # the sender of a message refused for its declared SIZE is only here
        await super().smtp_MAIL(arg)

    async def push(self, status: Any) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else str(status)
        if text.startswith("552") and isinstance(self.event_handler, MailListener):
            self.event_handler.refused_for_size(self.envelope, self._mail_arg, self.session)
        await super().push(status)


class MailListener:
    """The inbound SMTP listener of the email built-ins (see the module's docstring).

    `start()` listens on host:port; `close()` stops listening, drops open connections and waits (bounded) for
    deliveries under way. `port` is the bound port once started (useful with port 0).
    """

    def __init__(self, *, parts: ServerParts, host: str, port: int, domain: str, max_bytes: int,
                 senders: Sequence[AddressPattern], log: logging.Logger | logging.LoggerAdapter[Any],
                 agent_filter: Callable[[dict[str, Any]], bool] | None = None, sessions_per_hour: int = 0,
                 auth: tuple[str, str] | None = None, tls_context: ssl.SSLContext | None = None) -> None:
        """`auth` is (username, the NAME of the egress secret holding the password): every client must log in.
        `tls_context` (a server context) offers STARTTLS and requires it before anything else; without it, `auth`
        is accepted in plain text (the caller allows that on loopback only). `sessions_per_hour` 0: no limit."""
        self.parts = parts
        self.host = host
        self.port = port
        self.domain = domain.lower().rstrip(".")
        self.max_bytes = max_bytes
        self.senders = tuple(senders)
        self.log = log
        self.sessions_per_hour = sessions_per_hour
        self.auth = auth
        self.tls_context = tls_context
        self._starting: Counter[str] = Counter()  # new sessions under way per sender (not yet a row to count)
        # Which stored agents receive mail: by default those with the email built-in enabled.
        self.agent_filter = agent_filter or (lambda agent: "email" in (agent.get("builtins") or {}))
        self._server: asyncio.Server | None = None
        self._connections: weakref.WeakSet[_ListenerSMTP] = weakref.WeakSet()
        self._deliveries: set[asyncio.Task[str]] = set()
        self.accepted = 0
        self.refused = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        login: dict[str, Any] = {}
        if self.auth is not None:
            # auth_required stays off: handle_MAIL answers 530 itself (and logs it), and aiosmtpd would warn on every
            # connection about AUTH without TLS, which the family allows on loopback only. (Without `auth`, aiosmtpd's
            # own AUTH refuses every login, and no login is asked for.)
            login = {"authenticator": self._authenticate, "auth_require_tls": self.tls_context is not None}
        if self.tls_context is not None:
            login.update(tls_context=self.tls_context, require_starttls=True)

        def protocol() -> _ListenerSMTP:
            smtp = _ListenerSMTP(self, data_size_limit=self.max_bytes, enable_SMTPUTF8=True, hostname=self.domain,
                                 ident="jupyter-cma", timeout=60, loop=loop, **login)
            self._connections.add(smtp)
            return smtp

        self._server = await loop.create_server(protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.log.info("jupyter-cma: receiving mail for @%s on %s:%s (senders allowed: %s; login: %s; STARTTLS: %s)",
                      self.domain, self.host, self.port, ", ".join(map(str, self.senders)) or "none",
                      self.auth[0] if self.auth else "none", "required" if self.tls_context else "no")

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for smtp in list(self._connections):
            if smtp.transport is not None:
                smtp.transport.close()
        if self._deliveries:
            await asyncio.wait(list(self._deliveries), timeout=10)
        for task in self._deliveries:
            task.cancel()
        try:
            await asyncio.wait_for(server.wait_closed(), 5)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------ SMTP hooks (aiosmtpd calls them)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if self.auth is not None and not session.authenticated:
            # Not recorded as a row: a client that has not logged in could fill the store; the log line says who.
            self.log.warning("jupyter-cma: inbound mail from %s refused: the client did not log in (peer %s)", address,
                             session.peer)
            return "530 5.7.0 Authentication required"
        sender = self._allowed_sender(address)
        if sender is None:
            return self._refuse("550 5.7.1 this sender may not mail the agents of this server",
                                f"the sender {address!r} is not in c.EmailTools.inbound_senders", session, sender=address)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        agent, problem = self.agent_for(address)
        if agent is None:
            return self._refuse("550 5.1.1 no such agent here", problem, session, sender=envelope.mail_from,
                                recipients=[address])
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        mail = ReadMail.parse(raw)
        if mail.sender is None or self._allowed_sender(mail.sender) is None:
            return self._refuse("550 5.7.1 the From of this message may not mail the agents of this server",
                                f"the header From {mail.sender_text!r} is not in c.EmailTools.inbound_senders", session,
                                sender=envelope.mail_from, recipients=list(envelope.rcpt_tos), mail=mail, size=len(raw))
        if mail.message_id is None:  # give it one, so the agent's answer can name it and its replies thread
            mail.message_id = make_msgid(domain=self.domain)
        # Deliveries run as tasks of their own: a client that hangs up mid-delivery must not leave a session started
        # and unrecorded.
        task = asyncio.ensure_future(self._deliver_all(envelope.mail_from or "", list(envelope.rcpt_tos), mail, len(raw)))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return await asyncio.shield(task)

    def refused_for_size(self, envelope: Envelope | None, mail_arg: str | None, session: Session | None) -> None:
        """aiosmtpd answered 552 (at MAIL FROM for a declared SIZE, or at the end of DATA)."""
        sender = envelope.mail_from if envelope is not None and envelope.mail_from else None
        if sender is None and mail_arg:
            found = re.search(r"<([^<>]*)>", mail_arg)
            sender = found.group(1) if found else None
        self._refuse("552", f"the message is larger than c.EmailTools.inbound_max_bytes ({self.max_bytes} bytes)", session,
                     sender=sender, recipients=list(envelope.rcpt_tos) if envelope is not None else [])

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        """aiosmtpd's authenticator: the configured username and the password in the egress secret store (read at
        each login, so a new password holds at once). Never logs the password."""
        assert self.auth is not None
        username, secret_name = self.auth
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        try:
            secret = self.parts.secrets.get(secret_name)
        except SecretStoreError:
            secret = None
        if secret is None:
            self.log.error("jupyter-cma: an inbound SMTP login was refused: the password secret %r of "
                           "c.EmailTools.inbound_password_secret is not stored (PUT cma/api/egress/secrets/%s)",
                           secret_name, secret_name)
            return AuthResult(success=False, handled=False)
        # Both compared in constant time, so a failed login says nothing of which part was wrong.
        user_ok = hmac.compare_digest(bytes(auth_data.login), username.encode())
        password_ok = hmac.compare_digest(bytes(auth_data.password), secret.reveal().encode())
        if user_ok and password_ok:
            return AuthResult(success=True, auth_data=auth_data)
        self.log.warning("jupyter-cma: an inbound SMTP login as %r failed (peer %s)",
                         bytes(auth_data.login).decode("utf-8", "replace")[:100], session.peer)
        return AuthResult(success=False, handled=False)

    # ------------------------------------------------------------------ decisions

    def agent_for(self, address: str) -> tuple[dict[str, Any] | None, str]:
        """The stored agent an address names, or None and why not."""
        try:
            canonical = parse_address(address)
        except PolicyError as exc:
            return None, str(exc)
        alias, _, domain = canonical.rpartition("@")
        if domain != self.domain:
            return None, f"{canonical} is not an address of @{self.domain}, the only domain this server receives mail for"
        alias = alias.lower()
        agents = [a for a in self.parts.store.agents() if self.agent_filter(a)]
        by_id = [a for a in agents if a["id"].lower() == alias]
        if by_id:
            return by_id[0], ""
        by_name = [a for a in agents if agent_slug(a.get("name")) == alias]
        if len(by_name) == 1:
            return by_name[0], ""
        if by_name:
            return None, (f"{len(by_name)} agents with the email built-in are named {alias!r}; mail one of them by its id "
                          f"(<agent id>@{self.domain})")
        return None, f"no agent with the email built-in has the id or name {alias!r}"

    def _allowed_sender(self, address: str | None) -> str | None:
        try:
            canonical = parse_address(address)
        except PolicyError:
            return None
        return canonical if any(p.matches(canonical) for p in self.senders) else None

    def _refuse(self, answer: str, reason: str, session: Session | None, *, sender: str | None = None,
                recipients: list[str] | None = None, mail: ReadMail | None = None, size: int | None = None,
                agent_id: str | None = None) -> str:
        """Record a refused message (headers only, never its text), log it, and give the SMTP answer."""
        self.refused += 1
        peer = getattr(session, "peer", None)
        self.log.warning("jupyter-cma: inbound mail refused (%s): from %s to %s, peer %s", reason, sender,
                         ", ".join(recipients or []) or "-", peer)
        try:
            self.parts.store.add_mail(
                direction="in", status="refused", reason=reason, agent_id=agent_id, sender=sender, recipients=recipients or [],
                subject=mail.subject if mail else None, message_id=mail.message_id if mail else None,
                in_reply_to=mail.in_reply_to if mail else None, refs=mail.references if mail else None, size=size)
        except Exception:  # the answer must still go out
            self.log.exception("jupyter-cma: could not record a refused inbound mail")
        return answer

    # ------------------------------------------------------------------ delivery

    async def _deliver_all(self, envelope_from: str, recipients: list[str], mail: ReadMail, size: int) -> str:
        delivered, failures, later = 0, [], []
        for recipient in dict.fromkeys(recipients):
            agent, problem = self.agent_for(recipient)  # again: the agent may have gone since RCPT
            if agent is None:
                self._refuse("550", problem, None, sender=envelope_from, recipients=[recipient], mail=mail, size=size)
                continue
            try:
                await self._deliver(recipient, agent, mail, size)
                delivered += 1
            except _TryLater as exc:
                later.append(recipient)
                self._refuse("451", str(exc), None, sender=mail.sender, recipients=[recipient], mail=mail, size=size,
                             agent_id=agent["id"])
            except Exception as exc:
                failures.append(recipient)
                self._refuse("451", f"no session could be started or continued for {recipient}: {_describe(exc)}", None,
                             sender=envelope_from, recipients=[recipient], mail=mail, size=size)
        if delivered:
            return "250 OK"
        if later and not failures:
            return "451 4.7.1 too many new sessions from this sender in the last hour; try again later"
        if failures or later:
            return "451 4.3.0 the agent could not take the message now; try again later"
        return "550 5.1.1 no such agent here"

    async def _deliver(self, recipient: str, agent: dict[str, Any], mail: ReadMail, size: int) -> None:
        """Continue the sender's thread with this agent, or start a session; a repeated Message-ID is recorded, not
        delivered. `_TryLater` when the sender may start no more sessions now."""
        store = self.parts.store
        agent_id = agent["id"]
        if mail.message_id:
            before = self._session_of_agent(store.mail_thread_session([mail.message_id], agent_id=agent_id), agent_id)
            if before:
                # Answered 250 all the same: a server that resends a message it got no answer for must not bounce it.
                self.log.info("jupyter-cma: inbound mail %s for %s was delivered before (session %s); not again",
                              mail.message_id, agent_id, before)
                self._refuse("250", f"duplicate Message-ID: {mail.message_id} was delivered to this agent before; not "
                             "delivered again", None, sender=mail.sender, recipients=[recipient], mail=mail, size=size,
                             agent_id=agent_id)
                return
        client = self.parts.client()
        event = {"type": "user.message", "content": [{"type": "text", "text": ""}]}
        thread, note = None, None
        if mail.thread():
            thread = self._session_of_agent(store.mail_thread_session(mail.thread(), agent_id=agent_id,
                                                                      participant=mail.sender), agent_id)
            if thread is None:
                elsewhere = self._session_of_agent(store.mail_thread_session(mail.thread(), agent_id=agent_id), agent_id)
                if elsewhere:
                    # Message-IDs are quoted in every reply and forward: naming one proves nothing about the sender.
                    note = "a reply in a thread its sender took no part in: it started a session of its own"
                    self.log.warning("jupyter-cma: inbound mail %s from %s answers the thread of session %s, which %s took "
                                     "no part in; starting a new session instead", mail.message_id, mail.sender,
                                     elsewhere, mail.sender)
        session_id = None
        if thread:
            event["content"][0]["text"] = mail.as_user_message(recipient, reply=True)
            try:
                await client.beta.sessions.events.send(thread, events=[event])
                session_id = thread
            except Exception as exc:  # the session is gone upstream: the reply starts a new one
                self.log.warning("jupyter-cma: a reply for session %s could not be sent to it (%s); starting a new session",
                                 thread, _describe(exc))
        sender = (mail.sender or "").lower()  # the store compares addresses without regard to case, so does the count
        if session_id is None:
            self._check_sessions_started(sender)
            environment_id = self.parts.environment_id()
            if not environment_id:
                raise RuntimeError("the server has no environment_id configured")
            event["content"][0]["text"] = mail.as_user_message(recipient, reply=False)
            self._starting[sender] += 1
            try:
                created = await client.beta.sessions.create(agent=agent_id, environment_id=environment_id,
                                                             initial_events=[event], title=f"Email: {mail.subject}"[:200])
                session_id = created.id
                mail_id = self._record(session_id, agent_id, recipient, mail, size, note)
            finally:
                self._starting[sender] -= 1
                if self._starting[sender] <= 0:
                    del self._starting[sender]
        else:
            mail_id = self._record(session_id, agent_id, recipient, mail, size, note)
        self.accepted += 1
        self.log.info("jupyter-cma: inbound mail %s from %s to %s → session %s%s", mail_id, mail.sender, recipient,
                      session_id, " (thread)" if session_id == thread else "")

    def _record(self, session_id: str, agent_id: str, recipient: str, mail: ReadMail, size: int, note: str | None) -> int:
        return self.parts.store.add_mail(direction="in", status="accepted", reason=note, session_id=session_id,
                                         agent_id=agent_id, message_id=mail.message_id, in_reply_to=mail.in_reply_to,
                                         refs=mail.references, sender=mail.sender, recipients=[recipient],
                                         subject=mail.subject, body=mail.text, size=size)

    def _check_sessions_started(self, sender: str) -> None:
        """`_TryLater` when `sender` started `sessions_per_hour` sessions in the last hour (those under way count)."""
        if self.sessions_per_hour <= 0:
            return
        started = self.parts.store.mail_sessions_started(sender, time.time() - SESSIONS_WINDOW) + self._starting[sender]
        if started >= self.sessions_per_hour:
            raise _TryLater(f"{sender} started {started} sessions in the last hour, the most "
                            f"c.EmailTools.inbound_sessions_per_hour ({self.sessions_per_hour}) allows; try again later")

    def _session_of_agent(self, session_id: str | None, agent_id: str) -> str | None:
        """`session_id` when it is a session of `agent_id` (mail to one agent never reaches another's session)."""
        if not session_id:
            return None
        row = self.parts.store.session(session_id)
        if row is not None and row.get("agent_id"):
            return session_id if row["agent_id"] == agent_id else None
        mails = self.parts.store.session_mail(session_id, limit=1)
        return session_id if mails and mails[0].get("agent_id") == agent_id else None


class _TryLater(Exception):
    """The message may be taken later (451), not now: the sender started too many sessions."""


def _describe(exc: BaseException) -> str:
    """An error in a few words for a log line and a refused row (an API error's status and message, no body)."""
    status = getattr(exc, "status_code", None)
    text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__} {status}: {text}" if status else f"{type(exc).__name__}: {text}"
