"""The local cluster's administrator: asserted through the management API on every ``up``, repaired
through the CLI (which needs only the cookie) when a cluster was created with other credentials."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import requests

from queue_balancer.local.layout import LocalClusterError, LocalNode

Rabbitmqctl = Callable[..., str]  # rabbitmqctl(*args, node=LocalNode) -> stdout


def ensure_admin_user(node: LocalNode, user: str, password: str, rabbitmqctl: Rabbitmqctl) -> None:
    """Assert the admin user (administrator, all permissions on "/") and remove guest."""
    session = requests.Session()
    session.auth = (user, password)
    base = f"{node.management_url}/api"
    try:
        who = session.get(f"{base}/whoami", timeout=10)
        if who.status_code == 401:
            repair_admin_user(node, user, password, rabbitmqctl)
            who = session.get(f"{base}/whoami", timeout=10)
        expect_ok(who, "check the admin user")
        quoted = quote(user, safe="")
        if "administrator" not in who.json().get("tags", []):
            body = {"password": password, "tags": "administrator"}
            expect_ok(session.put(f"{base}/users/{quoted}", json=body, timeout=10), "tag the admin user")
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        permissions = session.get(f"{base}/permissions/%2F/{quoted}", timeout=10)
        if permissions.status_code != 200 or any(
            permissions.json().get(k) != v for k, v in everything.items()
        ):
            expect_ok(
                session.put(f"{base}/permissions/%2F/{quoted}", json=everything, timeout=10),
                'grant the admin user all permissions on vhost "/"',
            )
        if user != "guest":
            guest = session.delete(f"{base}/users/guest", timeout=10)
            if guest.status_code not in (204, 404):
                expect_ok(guest, "delete the guest user")
    except requests.RequestException as exc:
        raise LocalClusterError(
            f"the management API of {node.name} stopped answering while setting up the admin user: {exc}"
        ) from exc
    finally:
        session.close()


def repair_admin_user(node: LocalNode, user: str, password: str, rabbitmqctl: Rabbitmqctl) -> None:
    """Create the user or reset its password, tags and permissions through the CLI."""
    try:
        rabbitmqctl("add_user", user, password, node=node)
    except LocalClusterError as exc:
        if "already exists" not in str(exc):
            raise
        rabbitmqctl("change_password", user, password, node=node)
    rabbitmqctl("set_user_tags", user, "administrator", node=node)
    rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*", node=node)


def expect_ok(response: requests.Response, action: str) -> None:
    """Raise with the HTTP status and URL when ``action`` was not accepted."""
    if response.status_code >= 300:
        raise LocalClusterError(
            f"could not {action}: HTTP {response.status_code} from {response.url}: {response.text[:200]}"
        )
