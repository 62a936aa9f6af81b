"""A client of the simulator's admin API (``/__sim/``), for tests, the demo and the CLI.

Standard library only, so the test bed's commands start fast and nothing here shares code
with the product's ServiceNow client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["AdminError", "SimAdmin"]


class AdminError(RuntimeError):
    """The simulator refused an admin request (``status`` is its HTTP status; 0 when it
    could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SimAdmin:
    def __init__(self, url: str, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the simulator's http URL
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                error = json.loads(raw)["error"]
                text = f"{error['message']}: {error['detail']}"
            except (ValueError, KeyError, TypeError):
                text = raw.decode(errors="replace") or exc.reason
            raise AdminError(exc.code, text) from None
        except OSError as exc:
            raise AdminError(
                0, f"the ServiceNow simulator at {self.url} is unreachable: {exc}"
            ) from None
        return json.loads(raw) if raw else None

    # --- decisions -------------------------------------------------------------------------

    def decide(
        self,
        number: str,
        action: str,
        user_name: str,
        comments: str = "",
        *,
        force: bool = False,
        callback: str = "signed",
    ) -> dict[str, Any]:
        body = {"as": user_name, "comments": comments, "force": force, "callback": callback}
        answer: dict[str, Any] = self.call("POST", f"/__sim/changes/{number}/{action}", body)
        return answer

    def approve(self, number: str, user_name: str, comments: str = "", **options: Any) -> Any:
        return self.decide(number, "approve", user_name, comments, **options)

    def reject(self, number: str, user_name: str, comments: str = "", **options: Any) -> Any:
        return self.decide(number, "reject", user_name, comments, **options)

    def changes(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.call("GET", "/__sim/changes")["changes"]
        return answer

    # --- faults, counts, tokens, callback --------------------------------------------------

    def fail_next(
        self, status: int, count: int = 1, *, path_prefix: str = "/api/", retry_after: int = 1
    ) -> None:
        self.call(
            "POST",
            "/__sim/faults",
            {
                "kind": "status",
                "status": status,
                "count": count,
                "path_prefix": path_prefix,
                "retry_after": retry_after,
            },
        )

    def hang_next(self, seconds: float, count: int = 1, *, path_prefix: str = "/api/") -> None:
        self.call(
            "POST",
            "/__sim/faults",
            {"kind": "hang", "seconds": seconds, "count": count, "path_prefix": path_prefix},
        )

    def clear_faults(self) -> None:
        self.call("DELETE", "/__sim/faults")

    def counts(self) -> dict[str, int]:
        answer: dict[str, int] = self.call("GET", "/__sim/requests")["counts"]
        return answer

    def reset_counts(self) -> None:
        self.call("DELETE", "/__sim/requests")

    def expire_tokens(self) -> int:
        return int(self.call("POST", "/__sim/tokens/expire")["expired"])

    def set_callback(self, url: str, secrets: list[str]) -> None:
        self.call("POST", "/__sim/callback", {"url": url, "secrets": secrets})

    def numeric_state(self, enabled: bool = True) -> None:
        """The Table API answers ``state`` as a JSON number, as some instances' scripts do."""
        self.call("POST", "/__sim/quirks", {"numeric_state": enabled})

    def deliveries(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.call("GET", "/__sim/deliveries")["deliveries"]
        return answer
