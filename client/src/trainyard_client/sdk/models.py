"""Models: registered versions, aliases (promote, roll back), comparison and the audit trail."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import TYPE_CHECKING, Any

from trainyard_client.sdk.http import HttpClient
from trainyard_contracts import ModelVersionRecord

if TYPE_CHECKING:
    from trainyard_contracts.audit import AuditEntry
    from trainyard_contracts.modelregistry import AliasChange, AliasView, ModelLineage, VersionInfo


class ModelCalls(HttpClient):
    """The model registry calls of :class:`~trainyard_client.sdk.TrainyardClient`."""

    def models(self, name: str | None = None) -> builtins.list[ModelVersionRecord]:
        params = {"name": name} if name else {}
        rows = self._request("GET", "/v1/models", params=params).json().get("models", [])
        return [ModelVersionRecord.model_validate(row) for row in rows]

    def promote_model(
        self,
        name: str,
        version: int,
        alias: str = "production",
        *,
        if_better: str | None = None,
        lower_is_better: bool = False,
        min_delta: float = 0.0,
        expected_revision: int | None = None,
    ) -> AliasChange:
        """Point ``name@alias`` at ``version`` (MLflow's ``models:/name@alias``). With ``if_better``
        (a metric name) only when the version beats the holder by more than ``min_delta``:
        ``changed`` and ``reason`` say what was done and why. 409: the alias moved since
        ``expected_revision`` (or during the request); 403: the alias rules refuse this token."""
        from trainyard_contracts.modelregistry import AliasChange

        body: dict[str, Any] = {"version": version}
        if expected_revision is not None:
            body["expected_revision"] = expected_revision
        if if_better is not None:
            body["if_better"] = {
                "metric": if_better,
                "lower_is_better": lower_is_better,
                "min_delta": min_delta,
            }
        answer = self._request("POST", f"/v1/models/{name}/aliases/{alias}", json=body).json()
        return AliasChange.model_validate(answer)

    def rollback_model(
        self, name: str, alias: str = "production", *, expected_revision: int | None = None
    ) -> AliasChange:
        """Point ``name@alias`` back at its previous holder (409 when there is none)."""
        from trainyard_contracts.modelregistry import AliasChange

        body = {"expected_revision": expected_revision} if expected_revision is not None else {}
        answer = self._request("POST", f"/v1/models/{name}/aliases/{alias}/rollback", json=body).json()
        return AliasChange.model_validate(answer)

    def model_alias(self, name: str, alias: str) -> AliasView:
        """The alias's holder, its previous holders and its revision (404: not set)."""
        from trainyard_contracts.modelregistry import AliasView

        return AliasView.model_validate(self._request("GET", f"/v1/models/{name}/aliases/{alias}").json())

    def model_version(self, name: str, version: int) -> VersionInfo:
        """One version: params, metrics, commit, workdir digest, the aliases it holds."""
        from trainyard_contracts.modelregistry import VersionInfo

        return VersionInfo.model_validate(
            self._request("GET", f"/v1/models/{name}/versions/{version}").json()
        )

    def model_lineage(self, name: str, version: int) -> ModelLineage:
        """Where a version came from: its job and attempt, the executor and backend, the commit,
        the pipeline run or sweep, the image and runtime lock, its input datasets with digests."""
        from trainyard_contracts.modelregistry import ModelLineage

        return ModelLineage.model_validate(
            self._request("GET", f"/v1/models/{name}/versions/{version}/lineage").json()
        )

    def compare_models(self, name: str, first: int, second: int) -> tuple[VersionInfo, VersionInfo]:
        from trainyard_contracts.modelregistry import Comparison

        params = {"a": first, "b": second}
        found = Comparison.model_validate(
            self._request("GET", f"/v1/models/{name}/compare", params=params).json()
        )
        return found.versions[0], found.versions[1]

    def audit(
        self,
        since: datetime | None = None,
        who: str | None = None,
        model: str | None = None,
        limit: int = 100,
    ) -> builtins.list[AuditEntry]:
        """Audit entries, oldest first (the newest ``limit``): a team token reads its own."""
        from trainyard_contracts.audit import AuditEntry

        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = since.isoformat()
        if who is not None:
            params["who"] = who
        if model is not None:
            params["model"] = model
        rows = self._request("GET", "/v1/audit", params=params).json()["entries"]
        return [AuditEntry.model_validate(row) for row in rows]
