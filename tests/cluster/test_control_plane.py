"""The cluster tier's own fixture: a real kube-apiserver that enforces RBAC."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from tests.fixtures.envtest import ControlPlane


def test_a_service_account_without_a_role_is_refused(control_plane: ControlPlane, namespace: str) -> None:
    with control_plane.client() as api:
        k8s.CoreV1Api(api).create_namespaced_service_account(
            namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="nobody"))
        )
    token = control_plane.service_account_token(namespace, "nobody")
    with control_plane.client(token) as api, pytest.raises(k8s.ApiException) as refused:
        k8s.CoreV1Api(api).list_namespaced_secret(namespace)
    assert refused.value.status == 403
