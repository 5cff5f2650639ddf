"""SMTP replies as named constants, each with its enhanced status code (RFC 2034, RFC 3463)."""

from __future__ import annotations

from typing import NamedTuple


class Reply(NamedTuple):
    """One reply line: `code status text`. Tests assert on `prefix`, the part that never changes."""

    code: int
    status: str
    text: str

    def __str__(self) -> str:
        return f"{self.prefix} {self.text}"

    @property
    def prefix(self) -> str:
        # RFC 2034 §3: 354 and the greeting carry no enhanced status code.
        return f"{self.code} {self.status}" if self.status else str(self.code)

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __call__(self, **values: str) -> Reply:
        """The same reply with its `{placeholders}` filled in."""
        return self._replace(text=self.text.format(**values))


# --- session ---------------------------------------------------------------------------------
OK = Reply(250, "2.0.0", "OK")
BYE = Reply(221, "2.0.0", "Bye")
HELP = Reply(214, "2.0.0", "See RFC 5321")
VRFY_CANNOT = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
EXPN_DISABLED = Reply(502, "5.5.1", "EXPN not available")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_CONNECTIONS_FROM_CLIENT = Reply(421, "4.7.0", "Too many connections from your address, try again later")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TEMPORARY_FAILURE = Reply(451, "4.3.0", "Temporary local problem, try again later")

# --- syntax (RFC 5321 §4.2.2, §4.5.3.1) ------------------------------------------------------
COMMAND_UNRECOGNIZED = Reply(500, "5.5.1", "Command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Command line too long (RFC 5321 §4.5.3.1.4: 512 octets)")
BARE_LF = Reply(500, "5.5.2", "Syntax error: lines must end in CRLF (RFC 5321 §2.3.8)")
NUL_IN_COMMAND = Reply(500, "5.5.2", "Syntax error: NUL character in command")
BAD_SYNTAX = Reply(501, "5.5.4", "Syntax: {usage}")
BAD_HELO_NAME = Reply(501, "5.5.4", "Syntax: EHLO domain or address literal, without control characters")
NOT_SMTP = Reply(502, "5.5.1", "This is an SMTP server, not a web server")
PARAMETER_UNKNOWN = Reply(555, "5.5.4", "Parameter {name} not recognized")

# --- envelope --------------------------------------------------------------------------------
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
NEED_HELO = Reply(503, "5.5.1", "Send EHLO or HELO first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL before RCPT")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT before DATA")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter (RFC 6531 §3.4)")
MESSAGE_SIZE_EXCEEDS_LIMIT = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
USER_UNKNOWN = Reply(550, "5.1.1", "No such user here")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
POLICY_MIXES = Reply(
    452, "4.5.3", "Recipient domains differ in their policy for unverified mail; send to this one in a separate transaction"
)
# RFC 3463 X.2.2 mailbox full: 452 at RCPT (RFC 5321 §4.5.3.1.10 lets the client try later),
# 552 at DATA for a message that would not fit (RFC 5321 §4.2.3).
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full, try again later")
QUOTA_EXCEEDED = Reply(552, "5.2.2", "Message exceeds the recipient's mailbox quota")
# RFC 3463 X.4.6 routing loop detected; RFC 5321 §6.3: refused, never forwarded again.
MAIL_LOOP = Reply(554, "5.4.6", "Mail loop detected: {why}")
SENDER_BLOCKED = Reply(550, "5.7.1", "Sender blocked by the recipient's sender list")
RECIPIENT_TEMPFAIL = Reply(451, "4.3.0", "Temporary local problem looking up the recipient, try again later")

# --- DATA ------------------------------------------------------------------------------------
START_MAIL_INPUT = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
QUEUED = Reply(250, "2.0.0", "Ok: queued as {queue_id}")
DATA_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
DATA_LINE_TOO_LONG = Reply(554, "5.6.0", "Message has a line longer than 1000 octets (RFC 5321 §4.5.3.1.6)")
DATA_BARE_LF = Reply(554, "5.6.0", "Message has a bare LF or CR: lines must end in CRLF (RFC 5321 §2.3.8)")
DATA_NUL = Reply(554, "5.6.0", "Message contains NUL characters")
# The header block must end within the part of a message held in memory (wire.data.PART_SIZE), as
# Exim's header_maxsize: what checks and cleans the header fields reads that part only.
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header block exceeds 1 MiB")
ONLY_VERIFIED = Reply(
    550, "5.7.1", "{domain} accepts only verified mail: it must be announced with SOURCE (reverse delivery), not sent by DATA"
)
SPAM_REFUSED = Reply(550, "5.7.1", "Message refused as spam (score {score})")
# RFC 7489 §6.6.4, §10.3: the From domain's DMARC policy asks receivers to reject it.
DMARC_REJECTED = Reply(550, "5.7.1", "Message refused: {domain} publishes a DMARC policy of reject, and this message fails DMARC")

def multiline(reply: Reply, more: list[str]) -> str:
    """`reply` as the first line of a multi-line reply whose further lines are `more` (RFC 5321 §4.2.1).

    Without the last line's CRLF, as a single-line reply is pushed.
    """
    texts = [f"{reply.status} {reply.text}" if reply.status else reply.text, *more]
    last = len(texts) - 1
    return "\r\n".join(f"{reply.code}{'-' if i < last else ' '}{text}" for i, text in enumerate(texts))


# --- SOURCE: reverse-delivery.md §3 ----------------------------------------------------------
SOURCE_ACCEPTED = Reply(250, "2.6.0", "{id} accepted for retrieval")
SOURCE_BAD_ID = Reply(501, "5.5.4", "SOURCE needs an id of exactly 32 letters and digits")
SOURCE_NEED_EHLO = Reply(503, "5.5.1", "SOURCE is valid only in a session begun with EHLO")
SOURCE_NEED_MAIL = Reply(503, "5.5.1", "Need MAIL before SOURCE")
SOURCE_NEED_RCPT = Reply(503, "5.5.1", "Need RCPT before SOURCE")
SOURCE_NULL_SENDER = Reply(550, "5.7.1", "A null reverse-path has no domain to call back: use DATA")
SOURCE_TOO_MANY_PENDING = Reply(452, "4.3.1", "Too many unverified announcements from {what}, try again later")
SOURCE_ALREADY_ANNOUNCED = Reply(554, "5.7.1", "{id} already announced")

# --- GET: reverse-delivery.md §4 -------------------------------------------------------------
GET_MESSAGE_FOLLOWS = Reply(250, "2.0.0", "{id} message follows")
GET_UNKNOWN = Reply(550, "5.1.0", "{id} unknown")
GET_REFUSED = Reply(554, "5.7.1", "{id} is not for this client")
GET_BAD_ID = Reply(501, "5.5.4", "GET needs an id of exactly 32 letters and digits")
GET_NEED_EHLO = Reply(503, "5.5.1", "GET is valid only in a session begun with EHLO")
GET_IN_TRANSACTION = Reply(503, "5.5.1", "GET is not valid inside a mail transaction")
GET_TOO_MANY_UNKNOWN = Reply(421, "4.7.0", "Too many unknown ids from your address, closing connection")
