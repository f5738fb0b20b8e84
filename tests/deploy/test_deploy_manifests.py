"""deploy/k8s: every overlay renders, validates against the pinned Kubernetes schemas, passes checkov,
and keeps the deployment invariants (restricted pods, drains sized, writers bounded by partitions).

The heavy lifting is deploy/scripts/validate.sh (kubectl kustomize, kubernetes-validate, checkov in
deploy/.venv); these tests run it once and then assert on the JSON documents it writes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from apptsync.shared.settings import RetentionSettings, all_settings_fields

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("dev", "prod")
# First run installs checkov into deploy/.venv (about two minutes); later runs take ~15 s.
VALIDATE_TIMEOUT_SECONDS = 900
WORKLOAD_KINDS = ("Deployment", "Job", "CronJob")
SERVICES = ("gateway", "fetcher", "writer")
TMP = "/tmp"  # noqa: S108 - the mount path the manifests must give an emptyDir, not a file we use
TOPICS = {"apptsync.pages", "apptsync.page-results", "apptsync.dead-letters", "apptsync.job-events",
          "apptsync.appointment-changes"}
METRICS_PORT = 9464
# Prometheus runs in this namespace (deploy/README.md, "Observability"); the policies admit it.
MONITORING_NAMESPACE = "monitoring"
ALERT_RULES = DEPLOY / "alerts" / "apptsync-rules.yaml"

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This session's own output directory (parallel sessions must not share deploy/.rendered)."""
    return tmp_path_factory.mktemp("rendered")


@pytest.fixture(scope="module")
def validation(rendered: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEPLOY / "scripts" / "validate.sh"), *OVERLAYS],
        env={**os.environ, "APPTSYNC_VALIDATE_OUT": str(rendered)},
        capture_output=True,
        text=True,
        timeout=VALIDATE_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(
    request: pytest.FixtureRequest, validation: subprocess.CompletedProcess[str], rendered: Path
) -> tuple[str, list[Doc]]:
    assert validation.returncode == 0, f"validate.sh failed:\n{validation.stdout}\n{validation.stderr}"
    name: str = request.param
    docs: list[Doc] = json.loads((rendered / f"{name}.json").read_text("utf-8"))
    return name, docs


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod_spec(doc: Doc) -> Doc:
    if doc["kind"] == "CronJob":
        spec: Doc = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    else:
        spec = doc["spec"]["template"]["spec"]
    return spec


def _settings(docs: list[Doc]) -> Doc:
    (settings,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("apptsync-settings")
    ]
    return settings


def _workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def test_validation_script_passes_schema_and_checkov(
    validation: subprocess.CompletedProcess[str], rendered: Path
) -> None:
    assert validation.returncode == 0, f"validate.sh failed:\n{validation.stdout}\n{validation.stderr}"
    for name in OVERLAYS:
        schema = json.loads((rendered / f"{name}.schema.json").read_text("utf-8"))
        assert schema["errors"] == [] and schema["documents"] > 20
        checkov = json.loads((rendered / f"{name}.checkov.json").read_text("utf-8"))
        summary = checkov["summary"]
        assert summary["failed"] == 0 and summary["resource_count"] > 20 and summary["passed"] > 100


def test_every_checkov_skip_names_a_check_and_gives_a_reason(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    skips = [
        value
        for doc in docs
        for key, value in (doc["metadata"].get("annotations") or {}).items()
        if key.startswith("checkov.io/skip")
    ]
    assert skips, "the image digest skip is expected on every workload"
    for value in skips:
        check_id, _, reason = value.partition("=")
        assert check_id.startswith("CKV") and len(reason) > 40, value


def test_pods_meet_the_restricted_pod_security_standard(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    workloads = _workloads(docs)
    # 4 Deployments (gateway, fetcher, writer, webhook receiver), the migration Job, 2 sync CronJobs, the
    # retention and the subscription-renewal CronJobs.
    assert len(workloads) == 9
    for doc in workloads:
        pod = _pod_spec(doc)
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] >= 10000, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["runAsUser"] >= 10000, where
            assert {m["name"] for m in container["volumeMounts"] if m["mountPath"] == TMP} <= tmp_volumes
            assert any(m["mountPath"] == TMP for m in container["volumeMounts"]), where
            assert set(container["resources"]["requests"]) == {"cpu", "memory"}, where
            assert set(container["resources"]["limits"]) == {"cpu", "memory"}, where


def test_secrets_are_mounted_files_never_environment_values(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    for doc in _workloads(docs):
        for container in _pod_spec(doc)["containers"]:
            for variable in container.get("env", []):
                assert "secretKeyRef" not in variable.get("valueFrom", {}), variable["name"]
            for source in container.get("envFrom", []):
                assert "secretRef" not in source
            mounted = {m["name"] for m in container["volumeMounts"]}
            secret_volumes = {v["name"] for v in _pod_spec(doc)["volumes"] if "secret" in v}
            assert secret_volumes <= mounted
            file_settings = [v["value"] for v in container.get("env", []) if v["name"].endswith("_FILE")]
            assert file_settings, "each workload reads at least one secret from a file"
            for path in file_settings:
                mounts = container["volumeMounts"]
                assert any(path.startswith(m["mountPath"] + "/") and m.get("readOnly") for m in mounts), path


def test_every_apptsync_variable_is_a_real_setting(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    known = {name for name, _default, _text in all_settings_fields()}
    used = set()
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("apptsync-settings"):
            used |= set(doc["data"])
    for doc in _workloads(docs):
        for container in _pod_spec(doc)["containers"]:
            used |= {v["name"] for v in container.get("env", [])}
    unknown = sorted(name for name in used if name.startswith("APPTSYNC_") and name not in known)
    assert not unknown, f"not settings in apptsync.shared.settings: {unknown}"


def test_no_overlay_allows_an_outbound_origin_beyond_the_providers(overlay: tuple[str, list[Doc]]) -> None:
    """APPTSYNC_OUTBOUND_ALLOWED_ORIGINS exists for a provider simulator; neither overlay runs one, so
    connections may name the real providers' https hosts only (an overlay that adds a simulator may
    allow that simulator's origin and nothing else)."""
    name, docs = overlay
    assert "APPTSYNC_OUTBOUND_ALLOWED_ORIGINS" not in _settings(docs)["data"], name
    for doc in _workloads(docs):
        for container in _pod_spec(doc)["containers"]:
            assert "APPTSYNC_OUTBOUND_ALLOWED_ORIGINS" not in {v["name"] for v in container.get("env", [])}
    assert not [d for d in _workloads(docs) if "simulator" in json.dumps(_pod_spec(d)["containers"])], name


def test_services_have_grpc_probes_drain_time_and_own_identity(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    settings = _settings(docs)
    for service in SERVICES:
        deployment = _one(docs, "Deployment", f"apptsync-{service}")
        pod = _pod_spec(deployment)
        # Fetchers drain up to ~10 s, then release leases; writers finish and commit their batch.
        assert pod["terminationGracePeriodSeconds"] >= 30
        assert pod["serviceAccountName"] == f"apptsync-{service}"
        assert accounts[f"apptsync-{service}"]["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["args"] == [service]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        # Every service answers probes on its plaintext health port: the kubelet's gRPC probe cannot
        # speak TLS, which the gateway's API port serves in prod.
        port = ports["health"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"]["port"] == port, (service, probe)
        # The process must listen on all interfaces in the pod, on the probed port.
        assert settings["data"][f"APPTSYNC_{service.upper()}_HEALTH_ADDRESS"] == f"0.0.0.0:{port}"
        if service == "gateway":
            assert settings["data"]["APPTSYNC_GATEWAY_LISTEN_ADDRESS"] == f"0.0.0.0:{ports['grpc']}"
        assert _one(docs, "PodDisruptionBudget", f"apptsync-{service}")["spec"]["maxUnavailable"] == 1
    gateway_service = _one(docs, "Service", "apptsync-gateway")
    assert gateway_service["spec"]["ports"][0]["port"] == 50051


def _env(container: Doc) -> dict[str, str]:
    return {v["name"]: v.get("value", "") for v in container.get("env", [])}


def _mounted_secret(pod: Doc, container: Doc, path: str) -> tuple[str, list[str] | None]:
    """(Secret name, the keys it projects or None for all) of the read-only mount holding `path`."""
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mount.get("readOnly") is True, path
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    items = volume["secret"].get("items")
    return volume["secret"]["secretName"], None if items is None else [i["key"] for i in items]


def test_prod_serves_the_gateway_over_tls_and_the_cronjobs_check_its_ca(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    gateway_pod = _pod_spec(_one(docs, "Deployment", "apptsync-gateway"))
    (gateway,) = gateway_pod["containers"]
    gateway_env = _env(gateway)
    # The CronJobs that call the gateway (`sync-all`); the retention CronJob talks to PostgreSQL only.
    cronjobs = [
        d for d in docs
        if d["kind"] == "CronJob" and "sync-all" in _pod_spec(d)["containers"][0].get("args", [])
    ]
    assert len(cronjobs) == 2
    service = _one(docs, "Service", "apptsync-gateway")
    if name != "prod":
        # dev: plaintext on both ends (a gateway without TLS and clients without a CA agree).
        assert not any(key.startswith("APPTSYNC_GATEWAY_TLS_") for key in gateway_env)
        for cronjob in cronjobs:
            (container,) = _pod_spec(cronjob)["containers"]
            assert not any(key.startswith("APPTSYNC_CLI_TLS_") for key in _env(container))
        return
    cert, key = gateway_env["APPTSYNC_GATEWAY_TLS_CERT_FILE"], gateway_env["APPTSYNC_GATEWAY_TLS_KEY_FILE"]
    assert _mounted_secret(gateway_pod, gateway, cert) == ("apptsync-gateway-tls", None)
    assert _mounted_secret(gateway_pod, gateway, key) == ("apptsync-gateway-tls", None)
    assert "appProtocol" not in service["spec"]["ports"][0], "TLS is not cleartext HTTP/2 (h2c)"
    for cronjob in cronjobs:
        pod = _pod_spec(cronjob)
        (container,) = pod["containers"]
        env = _env(container)
        # TLS, not mutual TLS: the CA only, and from the Secret only its ca.crt (never the key).
        assert set(k for k in env if k.startswith("APPTSYNC_CLI_TLS_")) == {"APPTSYNC_CLI_TLS_CA_FILE"}
        ca = env["APPTSYNC_CLI_TLS_CA_FILE"]
        assert _mounted_secret(pod, container, ca) == ("apptsync-gateway-tls", ["ca.crt"])
        assert ca.endswith("/ca.crt")


def test_writer_autoscaling_is_bounded_by_the_pages_partitions(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    topics = {d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic"}
    assert set(topics) == TOPICS
    partitions = topics["apptsync.pages"]["spec"]["partitions"]
    hpa = _one(docs, "HorizontalPodAutoscaler", "apptsync-writer")
    assert hpa["spec"]["maxReplicas"] == partitions
    assert 1 <= hpa["spec"]["minReplicas"] <= partitions
    assert "replicas" not in _one(docs, "Deployment", "apptsync-writer")["spec"], "the HPA owns the writer count"
    settings = _settings(docs)
    assert int(settings["data"]["APPTSYNC_KAFKA_TOPIC_PARTITIONS"]) == partitions
    assert topics["apptsync.page-results"]["spec"]["partitions"] == partitions
    for topic in topics.values():
        config = topic["spec"]["config"]
        assert int(config["min.insync.replicas"]) <= topic["spec"]["replicas"]
        assert int(config["retention.ms"]) > 0


def test_cronjobs_sync_frequently_with_early_stop_and_nightly_in_full(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    cronjobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CronJob"}
    cronjobs.pop("apptsync-retention")  # test_retention_prunes_daily_as_the_services_role_within_its_deadline
    cronjobs.pop("apptsync-renew-subscriptions")  # test_the_webhook_receiver_is_reached_only_through_the_ingress
    policies = {}
    for name, cronjob in cronjobs.items():
        spec = cronjob["spec"]
        assert spec["concurrencyPolicy"] == "Forbid", name
        assert spec["startingDeadlineSeconds"] > 0 and spec["successfulJobsHistoryLimit"] >= 1, name
        assert spec["failedJobsHistoryLimit"] >= 1, name
        job = spec["jobTemplate"]["spec"]
        assert job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] >= 1, name
        (container,) = _pod_spec(cronjob)["containers"]
        assert container["args"][:2] == ["sync-all", "--policy"]
        policies[container["args"][2]] = spec["schedule"]
    assert set(policies) == {"no-new-records", "never"}
    assert policies["no-new-records"].startswith("*/"), "the early-stopping sync runs every few minutes"
    migrate = _one(docs, "Job", "apptsync-migrate")
    assert _pod_spec(migrate)["containers"][0]["args"] == ["migrate"]


def test_retention_prunes_daily_as_the_services_role_within_its_deadline(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    cronjob = _one(docs, "CronJob", "apptsync-retention")
    spec = cronjob["spec"]
    minute, hour, day, month, weekday = spec["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and (day, month, weekday) == ("*", "*", "*"), "once a day"
    assert spec["concurrencyPolicy"] == "Forbid"
    (container,) = _pod_spec(cronjob)["containers"]
    assert container["args"] == ["prune"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # The services' DSN (apptsync_service: row-level security applies), never the owner's.
    assert env["APPTSYNC_DATABASE_URL_FILE"] == "/etc/apptsync/database/url"
    assert "APPTSYNC_DATABASE_MIGRATION_URL" not in env
    # The Job's deadline leaves the command's own time budget room to stop between batches.
    values = _settings(docs)["data"]
    max_seconds = float(values.get("APPTSYNC_RETENTION_MAX_SECONDS", RetentionSettings().max_seconds))
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] > max_seconds
    assert int(values["APPTSYNC_RETENTION_LEDGER_DAYS"]) >= 8
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert [p["port"] for p in policies["apptsync-retention"]["egress"][0]["ports"]] == [5432]


def test_network_policies_deny_by_default_and_open_only_what_is_needed(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    deny = policies["apptsync-default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    egress_ports: dict[str, set[int]] = {}
    for name, spec in policies.items():
        for rule in spec.get("egress", []):
            assert rule.get("ports"), f"{name}: an egress rule without ports opens every port"
            for peer in rule["to"]:
                if "ipBlock" in peer:
                    assert [p["port"] for p in rule["ports"]] == [443], f"{name}: only HTTPS leaves the cluster"
                    assert "169.254.0.0/16" in peer["ipBlock"]["except"]
            component = spec["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component", "*")
            egress_ports.setdefault(component, set()).update(p["port"] for p in rule["ports"])
    assert egress_ports["*"] == {53, 4317, 4318}
    assert egress_ports["fetcher"] == {5432, 9092, 9093, 443}
    assert egress_ports["writer"] == {5432, 9092, 9093}
    # The gateway checks credentials with providers and subscribes connections to their webhooks.
    assert egress_ports["gateway"] == {5432, 443}
    assert egress_ports["webhook-receiver"] == {5432}
    assert egress_ports["renew-subscriptions"] == {5432, 443}
    assert egress_ports["migrate"] == {5432}
    assert egress_ports["sync"] == {50051}
    assert [p["port"] for p in policies["apptsync-gateway"]["ingress"][0]["ports"]] == [50051]


def test_services_serve_metrics_to_prometheus_and_export_traces(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    settings = _settings(docs)["data"]
    assert settings["OTEL_TRACES_EXPORTER"] == "otlp"
    assert re.fullmatch(r"http://[a-z0-9.-]+:4317", settings["OTEL_EXPORTER_OTLP_ENDPOINT"])
    scrape_policies = [
        d["spec"] for d in docs
        if d["kind"] == "NetworkPolicy" and any(
            peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            == MONITORING_NAMESPACE
            for rule in d["spec"].get("ingress", []) for peer in rule["from"]
        )
    ]
    assert len(scrape_policies) == 1
    (scrape,) = scrape_policies
    assert [p["port"] for rule in scrape["ingress"] for p in rule["ports"]] == [METRICS_PORT]
    (components,) = scrape["podSelector"]["matchExpressions"]
    assert components["key"] == "app.kubernetes.io/component"
    assert set(components["values"]) == {*SERVICES, "webhook-receiver"}
    for service in SERVICES:
        template = _one(docs, "Deployment", f"apptsync-{service}")["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", service
        assert annotations["prometheus.io/port"] == str(METRICS_PORT), service
        (container,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == METRICS_PORT, service
        env = container["env"]
        values = {v["name"]: v.get("value") for v in env}
        prefix = f"APPTSYNC_{service.upper()}_METRICS_"
        assert values[prefix + "HOST"] == "0.0.0.0" and values[prefix + "PORT"] == str(METRICS_PORT), service
        assert values["OTEL_SERVICE_NAME"] == f"apptsync-{service}"
        # $(VAR) expands only variables defined earlier in the list; a later one stays literal.
        names = [v["name"] for v in env]
        attributes = values["OTEL_RESOURCE_ATTRIBUTES"]
        assert attributes is not None and "k8s.pod.name=$(POD_NAME)" in attributes, service
        referenced = re.findall(r"\$\((\w+)\)", attributes)
        assert set(referenced) == {"POD_NAME", "POD_NAMESPACE"}, service
        for name in referenced:
            assert names.index(name) < names.index("OTEL_RESOURCE_ATTRIBUTES"), (service, name)
        downward = {v["name"]: v["valueFrom"]["fieldRef"]["fieldPath"] for v in env if "valueFrom" in v}
        assert downward["POD_NAME"] == "metadata.name" and downward["POD_NAMESPACE"] == "metadata.namespace"


def test_prometheus_rule_carries_exactly_the_alert_rule_file(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    # deploy/.venv has PyYAML (the validation tools need it); the app's .venv does not.
    loaded = subprocess.run(
        [str(DEPLOY / ".venv" / "bin" / "python"), "-c",
         "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1], encoding='utf-8'))))",
         str(ALERT_RULES)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    groups = json.loads(loaded.stdout)["groups"]
    rule = _one(docs, "PrometheusRule", "apptsync")
    assert rule["spec"]["groups"] == groups, "edit deploy/alerts/apptsync-rules.yaml and copy its groups"
    alerts = [r for group in groups for r in group["rules"]]
    assert len(alerts) >= 5 and all(r["annotations"]["runbook_url"].startswith("deploy/RUNBOOK.md#") for r in alerts)


def test_no_real_secret_is_committed(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    secrets = [d for d in docs if d["kind"] == "Secret"]
    if name == "prod":
        assert secrets == [], "prod Secrets are created on the cluster, never rendered from the repository"
        return
    assert {s["metadata"]["name"] for s in secrets} == {
        "apptsync-database", "apptsync-credentials-keyring", "apptsync-gateway-auth", "apptsync-sync-token"
    }
    for secret in secrets:
        for key, encoded in secret["data"].items():
            value = base64.b64decode(encoded).decode()
            assert "PLACEHOLDER" in value, (secret["metadata"]["name"], key)


def test_schema_validation_rejects_typos_and_unknown_custom_resources(
    validation: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    assert validation.returncode == 0, validation.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndataa:\n  k: v\n"
        "---\napiVersion: kafka.strimzi.io/v1beta2\nkind: KafkaTopic\nmetadata:\n  name: t\n"
        "  labels: {strimzi.io/cluster: c}\nspec:\n  partitions: 0\n"
        "---\napiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n"
        "---\napiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: r\n"
        "spec:\n  groups:\n    - name: g\n      rules:\n        - alert: A\n          expr: up == 0\n"
        "          fro: 5m\n"
    )
    result = subprocess.run(
        [str(DEPLOY / ".venv" / "bin" / "python"), str(DEPLOY / "scripts" / "validate_manifests.py"),
         "--kubernetes-version", "1.31.0", "--schemas", str(DEPLOY / "schemas"), "--out", str(tmp_path),
         str(broken)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "4 documents, 4 invalid" in result.stdout, result.stdout
    assert "dataa" in result.stdout and "Widget" in result.stdout and "partitions" in result.stdout
    assert "'fro' was unexpected" in result.stdout, result.stdout


def test_the_webhook_receiver_is_reached_only_through_the_ingress(overlay: tuple[str, list[Doc]]) -> None:
    """Its own Deployment with HTTP probes; the Ingress routes only /webhooks/ to it; its NetworkPolicy
    admits only the ingress controller's namespace; its channels are renewed by a CronJob."""
    _, docs = overlay
    deployment = _one(docs, "Deployment", "apptsync-webhook-receiver")
    (container,) = _pod_spec(deployment)["containers"]
    assert container["args"] == ["webhook-receiver"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    values = {v["name"]: v.get("value") for v in container["env"]}
    assert values["APPTSYNC_WEBHOOK_METRICS_PORT"] == str(METRICS_PORT)
    assert values["OTEL_SERVICE_NAME"] == "apptsync-webhook-receiver"
    ingress = _one(docs, "Ingress", "apptsync-webhook-receiver")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [(p["path"], p["backend"]["service"]["name"]) for p in paths] == [
        ("/webhooks/", "apptsync-webhook-receiver")
    ]
    assert ingress["spec"]["tls"], "providers deliver to https"
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    (rule,) = policies["apptsync-webhook-receiver"]["ingress"]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    assert [p["port"] for p in rule["ports"]] == [8080]
    renew = _one(docs, "CronJob", "apptsync-renew-subscriptions")
    assert _pod_spec(renew)["containers"][0]["args"] == ["renew-subscriptions"]
    assert renew["spec"]["concurrencyPolicy"] == "Forbid"
