"""An independently written SMTP/LMTP next hop for the relay tests (aiosmtpd).

Usage: aiosmtpd_peer.py smtp|lmtp PORT DIR [--tls-cert CERT.pem --tls-key KEY.pem]

Recipients starting with "nosuch" get 550 5.1.1 at RCPT, "later" 451 4.3.0 at RCPT, "once"
451 4.3.0 the first time each address is seen and 250 after that.
Each message is written to DIR/<n>.eml as "FROM <sender>\nTO <r1> <r2>...\n\n" + content.
LMTP: one reply per accepted recipient after DATA; a recipient starting with "full" gets
452 4.2.2 there. Prints READY once listening; stops when stdin closes.
With --tls-cert/--tls-key the peer offers STARTTLS (aiosmtpd's tls_context); a message that
came over TLS also gets DIR/<n>.tls: "<version> <cipher> sni=<name the client sent or ->".
"""

import asyncio
import itertools
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP

counter = itertools.count(1)
seen_once = set()


class Handler:
    def __init__(self, directory, lmtp):
        self.directory = directory
        self.lmtp = lmtp

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local.startswith("nosuch"):
            return "550 5.1.1 <%s>: Recipient address rejected: no such user" % address
        if local.startswith("later"):
            return "451 4.3.0 <%s>: try again later" % address
        if local.startswith("once") and address not in seen_once:
            seen_once.add(address)
            return "451 4.3.0 <%s>: greylisted, try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(self.directory, "%d.eml" % next(counter))
        with open(path + ".tmp", "wb") as f:
            f.write(("FROM %s\nTO %s\n\n" % (envelope.mail_from, " ".join(envelope.rcpt_tos))).encode())
            f.write(envelope.original_content)
        os.rename(path + ".tmp", path)
        if session.ssl is not None:
            tls = session.ssl["ssl_object"]
            sni = getattr(tls, "portcullis_sni", None) or "-"
            with open(path[:-4] + ".tls", "w") as f:
                f.write("%s %s sni=%s\n" % (tls.version(), tls.cipher()[0], sni))
        if not self.lmtp:
            return "250 2.0.0 Ok: queued as %d" % len(envelope.rcpt_tos)
        replies = []
        for r in envelope.rcpt_tos:
            if r.split("@")[0].startswith("full"):
                replies.append("452 4.2.2 <%s> Mailbox full" % r)
            else:
                replies.append("250 2.0.0 <%s> delivered" % r)
        return "\r\n".join(replies)


class LmtpController(Controller):
    def factory(self):
        return LMTP(self.handler)


def tls_context(args):
    """The STARTTLS context from --tls-cert/--tls-key, or None without them."""
    options = dict(zip(args[::2], args[1::2]))
    if "--tls-cert" not in options:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(options["--tls-cert"], options["--tls-key"])

    def remember_sni(tls, name, _context):
        tls.portcullis_sni = name

    context.sni_callback = remember_sni
    return context


def main():
    kind, port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    handler = Handler(directory, kind == "lmtp")
    cls = LmtpController if kind == "lmtp" else Controller
    context = tls_context(sys.argv[4:])
    extra = {"tls_context": context} if context else {}
    controller = cls(handler, hostname="127.0.0.1", port=port, **extra)
    if kind == "lmtp":
        # aiosmtpd's ready check speaks SMTP; the LMTP server does not answer its greeting.
        controller.ready_timeout = 5.0
    controller.start()
    print("READY", flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
