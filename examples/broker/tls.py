"""Mutual TLS for the broker: one CA, a certificate per node (and per client).

Node to node, both sides present certificates signed by the CA and verify the other's
(``CERT_REQUIRED`` both ways); peers are dialled by address, so the check is "signed by
our CA", not a host name. Clients (CLI, BrokerClient) use the same options.
"""

from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual: no certificate, no connection
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.check_hostname = False  # peers are dialled by address; the CA is the check
        return ctx


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-ca", type=Path, help="CA certificate (PEM): enables mutual TLS")
    p.add_argument("--tls-cert", type=Path, help="this node's/client's certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="its private key (PEM)")


def tls_from_args(args: argparse.Namespace) -> TlsFiles | None:
    given = [args.tls_ca, args.tls_cert, args.tls_key]
    if not any(given):
        return None
    if not all(given):
        raise SystemExit("error: --tls-ca, --tls-cert and --tls-key go together")
    for path in given:
        if not path.is_file():
            raise SystemExit(f"error: {path}: no such file")
    return TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)
