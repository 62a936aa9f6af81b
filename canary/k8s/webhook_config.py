"""The MutatingWebhookConfiguration that sends InferenceService updates to our webhook.

One webhook, ``inferenceservices.kserve-canary.io``, in a configuration named
``kserve-canary``:

* **UPDATE only.** The webhook changes nothing on CREATE (KServe ignores
  ``canaryTrafficPercent`` on a first deployment, KSERVE.md §1.3), so registering CREATE
  would only make creating an opted-in InferenceService fail while the controller is down.
* **Narrow scope** (an outage must never block unrelated updates): ``failurePolicy: Fail``
  means an outage of the controller blocks every update the webhook matches, so a CEL
  ``matchConditions`` entry keeps it to objects that carry a ``kserve-canary.io/enabled``
  annotation in the *new* object with any value but ``"false"``, and an optional
  ``namespaceSelector`` narrows it further. A value that is not a boolean (``"yes"``,
  ``"True"``) is sent too, so the webhook can deny it (fail closed) instead of letting
  KServe send an unanalysed model 100 %. An update that removes the opt-in (or sets it to
  ``"false"``) is not sent: opting out is the model owner's way to deploy without a canary
  (the controller then returns an active rollout's traffic to the stable revision, or
  leaves it, as the policy says, and stops managing the service).
* ``sideEffects: None`` (dry runs are fine), ``admissionReviewVersions: ["v1"]``, a short
  ``timeoutSeconds`` (the decision is pure and fast), and ``reinvocationPolicy: IfNeeded``
  so that a webhook that runs after ours and changes the object has it checked again.
* The apiserver calls mutating webhook configurations in the order of their names, so
  ``kserve-canary`` runs after KServe's ``inferenceservice.serving.kserve.io`` defaulter and
  sees the object in the ``model:`` form it stores (see :mod:`canary.admission`).

The apiserver checks the webhook's serving certificate against ``caBundle``, given in one of
two ways: the PEM of the CA itself, or, where cert-manager issues the certificate, the
``cert-manager.io/inject-ca-from: NAMESPACE/CERTIFICATE`` annotation and no ``caBundle``:
cert-manager's cainjector then writes the Certificate's CA into every webhook of the
configuration (and keeps it current when the CA is renewed). Until it has, the apiserver
verifies the webhook against its own trust roots, which do not hold a private CA: the calls
fail and, with ``failurePolicy: Fail``, updates of opted-in InferenceServices are refused.

The configuration is written by server-side apply with our field manager, so re-running
:func:`ensure_webhook_configuration` is idempotent and replaces what an earlier version of
the controller wrote; a field the new version no longer sets (the ``caBundle`` when
switching to cert-manager, the annotation when switching back) is removed, while a
``caBundle`` written by cainjector (its own field manager) stays.

:func:`webhook_configuration` checks its input before anything is sent
(:mod:`canary.k8s.webhook_checks`): the apiserver stores a ``caBundle`` it cannot use, or a
service name that resolves to nothing, and fails only later, on the first call.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Mapping
from typing import Any

from canary.k8s.client import (
    CONTROLLER_MANAGER,
    MUTATING_WEBHOOK_CONFIGURATION,
    KubeClient,
    NotFound,
)
from canary.k8s.webhook_checks import (
    CONFIGURATION_NAME,
    INJECT_CA_FROM,
    ServiceReference,
    check_ca_bundle,
    check_configuration_name,
    check_inject_ca_from,
    check_service,
)

__all__ = [
    "CONFIGURATION_NAME",
    "FIELD_MANAGER",
    "INJECT_CA_FROM",
    "MATCH_OPTED_IN",
    "WEBHOOK_NAME",
    "ServiceReference",
    "delete_webhook_configuration",
    "ensure_webhook_configuration",
    "webhook_configuration",
]

WEBHOOK_NAME = "inferenceservices.kserve-canary.io"
FIELD_MANAGER = CONTROLLER_MANAGER
MATCH_OPTED_IN = (
    "has(object.metadata.annotations) && "
    "'kserve-canary.io/enabled' in object.metadata.annotations && "
    "object.metadata.annotations['kserve-canary.io/enabled'] != 'false'"
)


def webhook_configuration(
    *,
    ca_bundle: bytes | None = None,
    inject_ca_from: str | None = None,
    url: str | None = None,
    service: ServiceReference | None = None,
    namespace_selector: Mapping[str, Any] | None = None,
    timeout_seconds: int = 5,
    name: str = CONFIGURATION_NAME,
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration object. Exactly one of ``ca_bundle`` (the PEM of
    the CA that signed the server's certificate) and ``inject_ca_from`` (``NAMESPACE/NAME``
    of the cert-manager Certificate whose CA cainjector is to fill in); exactly one of
    ``url`` (``https://…``) and ``service`` says where the webhook is. ValueError for
    anything the apiserver would refuse or could not use."""
    if (ca_bundle is None) == (inject_ca_from is None):
        raise ValueError("give exactly one of ca_bundle and inject_ca_from")
    if (url is None) == (service is None):
        raise ValueError("give exactly one of url and service")
    if url is not None and not url.startswith("https://"):
        raise ValueError(f"the apiserver calls webhooks over https only; got {url!r}")
    if service is not None:
        check_service(service)
    if not 1 <= timeout_seconds <= 30:
        raise ValueError(f"timeout_seconds must be between 1 and 30, not {timeout_seconds}")
    check_configuration_name(name)
    client_config: dict[str, Any] = {}
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/managed-by": "kserve-canary"},
    }
    if ca_bundle is not None:
        check_ca_bundle(ca_bundle)
        client_config["caBundle"] = base64.b64encode(ca_bundle).decode("ascii")
    elif inject_ca_from is not None:
        check_inject_ca_from(inject_ca_from)
        metadata["annotations"] = {INJECT_CA_FROM: inject_ca_from}
    if url is not None:
        client_config["url"] = url
    elif service is not None:
        client_config["service"] = {
            "namespace": service.namespace,
            "name": service.name,
            "port": service.port,
            "path": service.path,
        }
    webhook: dict[str, Any] = {
        "name": WEBHOOK_NAME,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "reinvocationPolicy": "IfNeeded",
        "timeoutSeconds": timeout_seconds,
        "clientConfig": client_config,
        "rules": [
            {
                "apiGroups": ["serving.kserve.io"],
                "apiVersions": ["v1beta1"],
                "operations": ["UPDATE"],
                "resources": ["inferenceservices"],
                "scope": "Namespaced",
            }
        ],
        "matchConditions": [{"name": "kserve-canary-opted-in", "expression": MATCH_OPTED_IN}],
    }
    if namespace_selector is not None:
        webhook["namespaceSelector"] = dict(namespace_selector)
    return {
        "apiVersion": MUTATING_WEBHOOK_CONFIGURATION.api_version,
        "kind": MUTATING_WEBHOOK_CONFIGURATION.kind,
        "metadata": metadata,
        "webhooks": [webhook],
    }


def ensure_webhook_configuration(
    kube: KubeClient,
    *,
    ca_bundle: bytes | None = None,
    inject_ca_from: str | None = None,
    url: str | None = None,
    service: ServiceReference | None = None,
    namespace_selector: Mapping[str, Any] | None = None,
    timeout_seconds: int = 5,
    name: str = CONFIGURATION_NAME,
) -> dict[str, Any]:
    """Create or update the configuration (server-side apply, forced: it is ours)."""
    body = webhook_configuration(
        ca_bundle=ca_bundle,
        inject_ca_from=inject_ca_from,
        url=url,
        service=service,
        namespace_selector=namespace_selector,
        timeout_seconds=timeout_seconds,
        name=name,
    )
    return kube.apply(MUTATING_WEBHOOK_CONFIGURATION, None, body, field_manager=FIELD_MANAGER,
                      force=True)  # fmt: skip


def delete_webhook_configuration(kube: KubeClient, name: str = CONFIGURATION_NAME) -> bool:
    """Delete the configuration; False if there was none."""
    with contextlib.suppress(NotFound):
        kube.delete(MUTATING_WEBHOOK_CONFIGURATION, None, name)
        return True
    return False
