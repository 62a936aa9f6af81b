"""The checks a webhook registration passes before anything is sent to the apiserver, and
the names they need. PURE: no I/O (the CA's certificates are parsed in memory).

They are the rules the apiserver applies (a service path whose segments are DNS
subdomains, a port from 1 to 65535) and a few it does not, because it would store the
object and fail only on the first call: the CA is PEM certificates and holds no private
key, the service's namespace and name are DNS labels, and the configuration's name sorts
after KServe's (see :mod:`canary.k8s.webhook_config`). Each raises ValueError saying what
is wrong.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
from dataclasses import dataclass

from canary.admission import ADMISSION_PATH
from canary.policy import DNS_LABEL

__all__ = [
    "CONFIGURATION_NAME",
    "INJECT_CA_FROM",
    "KSERVE_CONFIGURATION_NAME",
    "ServiceReference",
    "check_ca_bundle",
    "check_configuration_name",
    "check_dns_label",
    "check_inject_ca_from",
    "check_service",
    "check_service_path",
]

CONFIGURATION_NAME = "kserve-canary"
KSERVE_CONFIGURATION_NAME = "inferenceservice.serving.kserve.io"
INJECT_CA_FROM = "cert-manager.io/inject-ca-from"

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PEM_BLOCK = re.compile(
    r"-----BEGIN (?P<label>[^-\n]*)-----(?P<body>.*?)-----END (?P=label)-----", re.DOTALL
)


@dataclass(frozen=True)
class ServiceReference:
    """The webhook reached through a cluster Service (the in-cluster deployment)."""

    namespace: str
    name: str
    port: int = 443
    path: str = ADMISSION_PATH


def check_dns_label(what: str, value: str) -> None:
    """A DNS label, as namespaces and Service names are."""
    if len(value) > 63 or not DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must be a DNS label: 1-63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )


def _check_dns_subdomain(what: str, value: str) -> None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must be a DNS subdomain: at most 253 lower-case letters, digits, "
            "'-' and '.', each dot-separated part starting and ending with a letter or digit"
        )


def check_service_path(path: str) -> None:
    """The apiserver's rule for a service path: it starts with ``/`` and every segment is
    a DNS subdomain (lower-case letters, digits, ``-`` and ``.``)."""
    if not path.startswith("/"):
        raise ValueError(f"the webhook path {path!r} must start with '/'")
    segments = path[1:].removesuffix("/").split("/")
    if segments == [""]:
        return
    for i, segment in enumerate(segments, start=1):
        if not segment:
            raise ValueError(f"the webhook path {path!r} has an empty segment (at '//')")
        if len(segment) > 253 or not _DNS_SUBDOMAIN.fullmatch(segment):
            raise ValueError(
                f"the webhook path {path!r}: segment {i} ({segment!r}) may hold only lower-case "
                "letters, digits, '-' and '.', starting and ending with a letter or digit "
                "(no query, no fragment)"
            )


def check_service(service: ServiceReference) -> None:
    check_dns_label("the service namespace", service.namespace)
    check_dns_label("the service name", service.name)
    if not 1 <= service.port <= 65535:
        raise ValueError(f"the service port must be between 1 and 65535, not {service.port}")
    check_service_path(service.path)


def check_configuration_name(name: str) -> None:
    """A DNS subdomain that sorts after KServe's configuration, so that the apiserver calls
    our webhook after KServe's defaulter (see the module docstring)."""
    _check_dns_subdomain("the configuration name", name)
    if name <= KSERVE_CONFIGURATION_NAME:
        raise ValueError(
            f"the configuration name {name!r} sorts before KServe's "
            f"{KSERVE_CONFIGURATION_NAME!r}: the apiserver calls mutating webhooks in the "
            "order of their configurations' names, and ours must see the object after KServe's "
            f"defaulting; choose a name after it (e.g. {CONFIGURATION_NAME!r})"
        )


def check_inject_ca_from(reference: str) -> None:
    """``NAMESPACE/NAME`` of a cert-manager Certificate."""
    namespace, slash, name = reference.partition("/")
    if not slash or not namespace or not name:
        raise ValueError(
            f"the cert-manager Certificate {reference!r} must be given as NAMESPACE/NAME"
        )
    check_dns_label("the Certificate's namespace", namespace)
    _check_dns_subdomain("the Certificate's name", name)


def check_ca_bundle(pem: bytes) -> int:
    """Check that ``pem`` is one or more PEM-encoded X.509 certificates and nothing else
    (text between the blocks, as ``openssl`` writes it, is fine); return how many. The
    apiserver stores any bytes as a ``caBundle`` and fails only when it calls the webhook,
    so this is where a wrong file is caught. A private key is refused outright: a webhook
    configuration is no secret."""
    try:
        text = pem.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(
            "the CA is not PEM text (a DER or other binary file?); give the PEM-encoded "
            "certificate(s), '-----BEGIN CERTIFICATE-----' ..."
        ) from None
    blocks = list(_PEM_BLOCK.finditer(text))
    if not blocks:
        if "-----BEGIN " in text:
            raise ValueError("the CA has a '-----BEGIN' line without its matching '-----END' line")
        raise ValueError(
            "the CA holds no PEM block; give the PEM-encoded certificate(s), "
            "'-----BEGIN CERTIFICATE-----' ..."
        )
    if text.count("-----BEGIN ") != len(blocks):
        raise ValueError("the CA has a '-----BEGIN' line without its matching '-----END' line")
    for number, block in enumerate(blocks, start=1):
        label = block["label"]
        if "PRIVATE KEY" in label:
            raise ValueError(
                f"the CA holds a private key (PEM block {number}, {label!r}); a webhook "
                "configuration is no secret: give the CA certificate only"
            )
        if label != "CERTIFICATE":
            raise ValueError(
                f"the CA holds a {label!r} block (PEM block {number}); only CERTIFICATE "
                "blocks belong in a CA bundle"
            )
        try:
            der = base64.b64decode("".join(block["body"].split()), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"certificate {number} of the CA is not valid base64") from None
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(
                f"certificate {number} of the CA is not an X.509 certificate ({exc})"
            ) from None
    return len(blocks)
