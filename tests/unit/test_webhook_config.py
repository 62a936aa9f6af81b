"""The MutatingWebhookConfiguration we build: both ways of giving the CA, and what is refused
before anything reaches the apiserver."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from canary.admission import ADMISSION_PATH
from canary.k8s.webhook_checks import check_ca_bundle
from canary.k8s.webhook_config import (
    INJECT_CA_FROM,
    MATCH_OPTED_IN,
    WEBHOOK_NAME,
    ServiceReference,
    webhook_configuration,
)
from tests.unit.webhook_pems import (
    BAD_BASE64,
    CA_ONE,
    CA_TWO,
    CSR_BLOCK,
    DER,
    KEY_BLOCK,
    NOT_X509,
    UNCLOSED,
)

SERVICE = ServiceReference("kserve-canary", "kserve-canary")


def _hook(configuration: dict[str, Any]) -> dict[str, Any]:
    (hook,) = configuration["webhooks"]
    assert isinstance(hook, dict)
    return hook


def test_the_url_form_with_a_ca_bundle_is_as_before() -> None:
    """What the test bed, the demo and the e2e harness register."""
    configuration = webhook_configuration(ca_bundle=CA_ONE, url="https://127.0.0.1:8443/a")
    hook = _hook(configuration)
    assert hook["clientConfig"] == {
        "caBundle": base64.b64encode(CA_ONE).decode(),
        "url": "https://127.0.0.1:8443/a",
    }
    assert "annotations" not in configuration["metadata"]
    assert hook["name"] == WEBHOOK_NAME
    assert hook["rules"][0]["operations"] == ["UPDATE"]
    assert hook["matchConditions"] == [
        {"name": "kserve-canary-opted-in", "expression": MATCH_OPTED_IN}
    ]


def test_the_cert_manager_form_has_the_annotation_and_no_ca_bundle() -> None:
    configuration = webhook_configuration(
        inject_ca_from="kserve-canary/webhook-serving", service=SERVICE
    )
    assert configuration["metadata"]["annotations"] == {
        INJECT_CA_FROM: "kserve-canary/webhook-serving"
    }
    assert INJECT_CA_FROM == "cert-manager.io/inject-ca-from"
    assert _hook(configuration)["clientConfig"] == {
        "service": {
            "namespace": "kserve-canary",
            "name": "kserve-canary",
            "port": 443,
            "path": ADMISSION_PATH,
        }
    }


@pytest.mark.parametrize(
    "sources",
    [{}, {"ca_bundle": CA_ONE, "inject_ca_from": "kserve-canary/webhook-serving"}],
    ids=["neither", "both"],
)
def test_exactly_one_ca_source(sources: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="give exactly one of ca_bundle and inject_ca_from"):
        webhook_configuration(service=SERVICE, **sources)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"service": ServiceReference("kserve-canary", "kserve-canary", 0)},
         "the service port must be between 1 and 65535, not 0"),
        ({"service": ServiceReference("kserve-canary", "kserve-canary", 65536)},
         "not 65536"),
        ({"service": ServiceReference("kserve-canary", "kserve-canary", 443, "admission")},
         "the webhook path 'admission' must start with '/'"),
        ({"service": ServiceReference("kserve-canary", "kserve-canary", 443, "/a?b=c")},
         "segment 1 ('a?b=c') may hold only lower-case letters"),
        ({"service": ServiceReference("Kserve", "kserve-canary")},
         "the service namespace 'Kserve' must be a DNS label"),
        ({"service": ServiceReference("kserve-canary", "")},
         "the service name '' must be a DNS label"),
        ({"service": SERVICE, "name": "admission-hooks"},
         "the configuration name 'admission-hooks' sorts before KServe's "
         "'inferenceservice.serving.kserve.io'"),
        ({"service": SERVICE, "name": "kserve_canary"},
         "the configuration name 'kserve_canary' must be a DNS subdomain"),
        ({"service": SERVICE, "timeout_seconds": 31},
         "timeout_seconds must be between 1 and 30, not 31"),
        ({"url": "http://127.0.0.1/a"}, "the apiserver calls webhooks over https only"),
        ({"url": "https://127.0.0.1/a", "service": SERVICE},
         "give exactly one of url and service"),
    ],
)  # fmt: skip
def test_what_the_apiserver_would_refuse_or_could_not_use_is_refused_here(
    arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        webhook_configuration(ca_bundle=CA_ONE, **arguments)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("webhook-serving", "must be given as NAMESPACE/NAME"),
        ("/webhook-serving", "must be given as NAMESPACE/NAME"),
        ("kserve-canary/", "must be given as NAMESPACE/NAME"),
        ("Kserve/webhook-serving", "the Certificate's namespace 'Kserve' must be a DNS label"),
        ("kserve-canary/a/b", "the Certificate's name 'a/b' must be a DNS subdomain"),
    ],
)
def test_a_bad_certificate_reference_is_refused(reference: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        webhook_configuration(inject_ca_from=reference, service=SERVICE)


def test_service_paths_the_apiserver_accepts() -> None:
    for path in ("/", "/admission/inferenceservices", "/v1.2/mutate/"):
        service = ServiceReference("kserve-canary", "kserve-canary", 8443, path)
        hook = _hook(webhook_configuration(ca_bundle=CA_ONE, service=service))
        assert hook["clientConfig"]["service"]["path"] == path


def test_a_bundle_of_certificates_with_text_between_them_counts_its_certificates() -> None:
    assert check_ca_bundle(CA_ONE) == 1
    assert check_ca_bundle(b"subject=CN = one\n" + CA_ONE + b"\n# two\n" + CA_TWO) == 2


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (b"", "the CA holds no PEM block"),
        (b"hello", "the CA holds no PEM block"),
        (DER, "the CA is not PEM text (a DER or other binary file?)"),
        (KEY_BLOCK, "the CA holds a private key (PEM block 1, 'PRIVATE KEY')"),
        (CA_ONE + KEY_BLOCK, "the CA holds a private key (PEM block 2, 'PRIVATE KEY')"),
        (CSR_BLOCK, "the CA holds a 'CERTIFICATE REQUEST' block (PEM block 1)"),
        (UNCLOSED, "a '-----BEGIN' line without its matching '-----END' line"),
        (CA_ONE + UNCLOSED, "a '-----BEGIN' line without its matching '-----END' line"),
        (BAD_BASE64, "certificate 1 of the CA is not valid base64"),
        (CA_ONE + NOT_X509, "certificate 2 of the CA is not an X.509 certificate"),
    ],
)
def test_a_ca_that_is_not_pem_certificates_is_refused(pem: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        webhook_configuration(ca_bundle=pem, service=SERVICE)
