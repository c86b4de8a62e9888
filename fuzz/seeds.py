#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ (committed; re-run after
adding fixtures). Seeds are the string literals of each parser's own tests
and transcripts (real commands, replies, messages, smuggling attempts), plus
a few complete transcripts below. Files are named by content hash, so
re-running only adds."""
import hashlib, os, re, struct, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")
MAX_SEED = 8192

LIT = re.compile(r'(b?)"((?:[^"\\]|\\.|\\\n)*)"', re.S)

def unescape(s, is_bytes):
    out, i = bytearray(), 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        n = s[i + 1]
        i += 2
        if n == "\n":
            while i < len(s) and s[i] in " \t\n":
                i += 1
        elif n in 'nrt0\\"\'':
            out += {"n": b"\n", "r": b"\r", "t": b"\t", "0": b"\0", "\\": b"\\", '"': b'"', "'": b"'"}[n]
        elif n == "x":
            out.append(int(s[i:i + 2], 16))
            i += 2
        elif n == "u":
            end = s.index("}", i)
            out += chr(int(s[i + 1:end], 16)).encode()
            i = end + 1
        else:
            out += ("\\" + n).encode()
    return bytes(out)

def literals(*paths):
    for p in paths:
        text = open(os.path.join(ROOT, p), encoding="utf-8").read()
        for m in LIT.finditer(text):
            try:
                yield unescape(m.group(2), bool(m.group(1)))
            except (ValueError, IndexError):
                pass

def write(target, seeds, prefix=b""):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    n = 0
    for s in seeds:
        s = prefix + s
        if not s or len(s) > MAX_SEED:
            continue
        name = hashlib.sha1(s).hexdigest()[:16]
        path = os.path.join(d, name)
        if not os.path.exists(path):
            open(path, "wb").write(s)
            n += 1
    print(f"{target}: {n} new, {len(os.listdir(d))} total")

# A whole SMTP session as a client sends it (pipelined).
SMTP_SESSION = (b"EHLO client.example.org\r\nMAIL FROM:<alice@example.org> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\n"
    b"RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+2B@example.com\r\n"
    b"RCPT TO:<Postmaster>\r\nDATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nBDAT 5 LAST\r\nhello"
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nRSET\r\nNOOP x\r\nSTARTTLS\r\nQUIT\r\n")
MESSAGE = (b"Return-Path: <alice@example.org>\r\nReceived: from client.example.org ([192.0.2.1])\r\n\tby mx.example.com; Tue, 1 Jul 2025 10:00:00 +0000\r\n"
    b"From: \"Alice A.\" <alice@example.org>\r\nTo: Bob <bob@example.com>, team: carol@example.com, dan@example.com;\r\nCc: =?utf-8?b?w6lsaXNl?= <elise@example.com>\r\n"
    b"Subject: =?utf-8?q?r=C3=A9union?=\r\nDate: Tue, 1 Jul 2025 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\nIn-Reply-To: <0@example.org>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n"
    b"--b1\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\nContent-ID: <p1>\r\nContent-Language: fr, en\r\n\r\nJVBERi0xLjQK\r\n"
    b"--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: inner@example.net\r\nSubject: inner\r\n\r\ninner body\r\n--b1--\r\nepilogue\r\n")
DSN = (b"From: MAILER-DAEMON@mx.example.com\r\nTo: alice@example.org\r\nAuto-Submitted: auto-replied\r\nSubject: Undelivered Mail\r\n"
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"r\"\r\n\r\n--r\r\n\r\nfailed\r\n--r\r\nContent-Type: message/delivery-status\r\n\r\n"
    b"Reporting-MTA: dns; mx.example.com\r\n\r\nFinal-Recipient: rfc822; bob@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n--r--\r\n")
IMAP_SESSION = (b"a1 CAPABILITY\r\na2 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\na3 SELECT INBOX\r\na4 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODYSTRUCTURE ENVELOPE)\r\n"
    b"a5 UID SEARCH CHARSET UTF-8 OR (FROM \"bob\" SINCE 1-Jul-2025) NOT (SEEN UNDELETED) LARGER 100\r\n"
    b"a6 APPEND Sent (\\Seen) \"01-Jul-2025 10:00:00 +0000\" {11}\r\nhello\r\n.\r\n\r\na7 STORE 1:3,5 +FLAGS.SILENT (\\Deleted)\r\na8 LIST \"\" \"*\"\r\na9 IDLE\r\nDONE\r\na10 LOGOUT\r\n")
POP3_SESSION = b"CAPA\r\nUSER alice@example.org\r\nPASS secret with spaces\r\nSTAT\r\nLIST\r\nLIST 1\r\nUIDL\r\nTOP 1 10\r\nRETR 1\r\nDELE 1\r\nRSET\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nSTLS\r\nUTF8\r\nQUIT\r\n"

def main():
    # smtp_command: lines as smtp-in's framing sees them.
    write("smtp_command", list(literals("crates/smtp-in/src/proto/command.rs", "crates/smtp-in/src/proto/line.rs",
                                        "crates/smtp-in/tests/session.rs")) + [SMTP_SESSION])
    # smtp_body: 3 selector bytes (mode/limit, split point), then the data.
    body = list(literals("crates/mail-wire/src/body.rs", "crates/smtp-in/tests/session.rs")) + [MESSAGE + b"\r\n.\r\nQUIT\r\n", DSN + b".\r\n"]
    write("smtp_body", body, b"\x00\x07\x00")
    write("smtp_body", body[:40], b"\x01\x03\x00")
    write("smtp_body", body[:20], b"\x0a\x05\x00")
    # smtp_reply: 2 bytes of split point, then what a server sends.
    write("smtp_reply", list(literals("crates/mail-wire/src/reply.rs", "crates/mail-wire/src/reply/parse.rs",
                                      "crates/smtp-out/tests/relay.rs")) + [
        b"220 mx.example.com ESMTP ready\r\n", b"250-mx.example.com Hello\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-DSN\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n",
        b"550-5.1.1 The email account that you tried to reach does not exist.\r\n550 5.1.1 https://support.example/answer\r\n",
        b"421 4.7.0 Try again later, closing connection.\r\n", b"354 Go ahead\r\n"], b"\x05\x00")
    # smtp_envelope: one string, tried as domain, address, path+params, xtext.
    write("smtp_envelope", list(literals("crates/mail-wire/src/address.rs", "crates/mail-wire/src/path.rs",
                                         "crates/mail-wire/src/params.rs")) + [
        b"<alice@example.org> SIZE=100 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc+2B1",
        "<用户@例子.广告> SMTPUTF8".encode(), b"<@relay.example:user@example.com> NOTIFY=NEVER", b"bob+2Bx@example.com"])
    write("sasl", list(literals("crates/mail-wire/src/sasl/mod.rs", "crates/mail-wire/src/sasl/plain.rs",
                                "crates/mail-wire/src/sasl/login.rs", "crates/mail-wire/src/sasl/scram.rs")) + [
        b"\0alice@example.org\0secret", b"AGFsaWNlAHNlY3JldA==", b"n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL",
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=", b"*", b"="])
    # imap_command: 3 selector bytes (authenticated, split point).
    imap = list(literals("crates/imap/src/parser/tests.rs", "crates/imap/src/framing.rs", "crates/imap/src/mutf7.rs",
                         "crates/imap/src/mailbox_name.rs")) + [IMAP_SESSION]
    write("imap_command", imap, b"\x01\x09\x00")
    write("imap_command", imap[:30], b"\x00\x02\x00")
    write("pop3_command", list(literals("crates/pop3/src/proto.rs")) + [POP3_SESSION], b"\x04\x00")
    write("proxy_header", list(literals("crates/service-kit/src/proxy.rs")) + [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 25\r\nEHLO x\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xcb\x00\x71\x09\xc6\x33\x64\x02\x04\xd2\x02\x4b",
        b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00", b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24" + bytes(32) + b"\x04\xd2\x00\x19"])
    msgs = [s for s in literals("crates/mailbox-store/src/structure.rs", "crates/mail-dsn/src/lib.rs") if b":" in s]
    write("mime_structure", msgs + [MESSAGE, DSN])
    write("dsn", msgs + [MESSAGE, DSN, b"5.1.1 no such user", b"4.4.1 connection timed out"])

if __name__ == "__main__":
    main()
