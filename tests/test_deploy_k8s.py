"""The Kubernetes manifests (deploy/k8s), the adapter rule and the Grafana dashboard say what aigi really does.

Every kustomization is rendered with ``kubectl kustomize``; core objects pass ``kubernetes-validate --strict`` for
Kubernetes :data:`K8S_VERSION`, custom resources their CRD's vendored OpenAPI schema (deploy/k8s/schemas). The
serving container's command is parsed by aigi's own CLI parser, and its ports, probes, mounts and the Services
are compared with what that parse says ``aigi serve`` listens on and reads. The dashboard's and the adapter's
queries may only name metrics a real Triton exports. No cluster is involved: nothing here applies a manifest.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import re
import shutil
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

K8S_VERSION = "1.31"  # the Kubernetes version the core objects are validated against
ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "aigi-triton.json"
DEPLOYMENT = "aigi-triton"  # the serving Deployment's name in every overlay
CONTAINER = "triton"  # its container running aigi serve
# GPU metrics exist only where Triton sees a GPU; the test server runs on a CPU
GPU_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"}
# the Triton runtime of KServe (config/runtimes/kserve-tritonserver.yaml at v0.20.0) listens for HTTP here
KSERVE_TRITON_HTTP_PORT = 8080


def _kustomizations() -> list[str]:
    """Every folder under deploy/k8s with a kustomization.yaml that renders on its own (components do not)."""
    found = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind") != "Component":
            found.append(path.parent.relative_to(K8S).as_posix())
    return found


KUSTOMIZATIONS = _kustomizations()
SERVING = [name for name in KUSTOMIZATIONS if name == "base" or name.startswith("overlays/")]


@functools.cache
def render(name: str) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl kustomize deploy/k8s/NAME`` renders (``kustomize build`` when only that is here)."""
    if kubectl := shutil.which("kubectl"):
        command = [kubectl, "kustomize", str(K8S / name)]
    elif kustomize := shutil.which("kustomize"):
        command = [kustomize, "build", str(K8S / name)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed: the manifests cannot be rendered")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(name: str, kind: str) -> list[dict[str, Any]]:
    return [obj for obj in render(name) if obj["kind"] == kind]


def one(name: str, kind: str, object_name: str) -> dict[str, Any]:
    found = [obj for obj in objects(name, kind) if obj["metadata"]["name"] == object_name]
    assert len(found) == 1, f"{name}: expected one {kind} {object_name}, found {len(found)}"
    return found[0]


def pod_spec(name: str) -> dict[str, Any]:
    return one(name, "Deployment", DEPLOYMENT)["spec"]["template"]["spec"]


def serving_container(name: str) -> dict[str, Any]:
    containers = {container["name"]: container for container in pod_spec(name)["containers"]}
    assert CONTAINER in containers, f"{name}: no container {CONTAINER!r} in {sorted(containers)}"
    return containers[CONTAINER]


def parse_aigi(argv: list[str]) -> argparse.Namespace:
    """``argv`` (starting with ``aigi``) parsed by aigi's real CLI parser; fails on any flag it does not accept."""
    from aigi.cli import build_parser

    assert argv and argv[0] == "aigi", f"the command does not start with aigi: {argv}"
    try:
        args, unknown = build_parser().parse_known_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"aigi's parser refused {argv} (exit {exc.code})")
    assert not unknown, f"aigi {argv[1]} does not accept {unknown}"
    return args


def serve_args(name: str) -> argparse.Namespace:
    container = serving_container(name)
    argv = [*container.get("command", []), *container.get("args", [])]
    assert argv[:2] == ["aigi", "serve"], f"{name}: the container does not run aigi serve: {argv}"
    return parse_aigi(argv)


def serve_defaults() -> argparse.Namespace:
    return parse_aigi(["aigi", "serve", "--repo", "REPO"])


def port_number(port: int | str, container: dict[str, Any]) -> int:
    """A probe's or Service's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    named = {entry["name"]: entry["containerPort"] for entry in container.get("ports", [])}
    assert port in named, f"port {port!r} names no container port ({sorted(named)})"
    return named[port]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def is_gpu(name: str) -> bool:
    return "nvidia.com/gpu" in serving_container(name).get("resources", {}).get("limits", {})


# -- rendering and schemas ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders_named_objects_when_built(name: str) -> None:
    rendered = render(name)
    assert rendered, f"{name} rendered nothing"
    for obj in rendered:
        assert obj.get("apiVersion") and obj.get("kind") and obj.get("metadata", {}).get("name"), obj
        assert obj["metadata"].get("namespace") == "aigi", f"{name}: {obj['kind']} {obj['metadata']['name']}"


def test_kustomizations_cover_base_cpu_gpu_object_storage_and_kserve_when_listed() -> None:
    expected = {"base", "overlays/cpu", "overlays/gpu", "overlays/gpu-object-storage", "kserve"}
    assert expected <= set(KUSTOMIZATIONS)


def _vendored_schema_path(obj: dict[str, Any]) -> Path:
    group, _, version = obj["apiVersion"].rpartition("/")
    return SCHEMAS / f"{obj['kind'].lower()}-{group}-{version}.json"


def _is_custom(obj: dict[str, Any]) -> bool:
    return _vendored_schema_path(obj).exists()


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_core_objects_pass_kubernetes_validate_strict_when_rendered(name: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[dev]')"
    )
    checked = 0
    for obj in render(name):
        if _is_custom(obj):
            continue
        label = f"{obj['kind']} {obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{name}: {label} ({obj['apiVersion']}) is neither core Kubernetes {K8S_VERSION} nor vendored")
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {label}: {'.'.join(map(str, exc.path))}: {exc.message}")
        checked += 1
    assert checked, f"{name} rendered no core object"


def strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as the API server's strict field validation does."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@functools.cache
def crd_validator(path: Path) -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (pip install -e '.[dev]')")
    schema = strict(json.loads(path.read_text()))
    jsonschema.Draft4Validator.check_schema(schema)  # OpenAPI v3.0's schema dialect is draft 4's
    return jsonschema.Draft4Validator(schema)


def crd_errors(obj: dict[str, Any]) -> list[str]:
    validator = crd_validator(_vendored_schema_path(obj))
    return [f"{'.'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(obj)]


def test_custom_resources_match_their_vendored_crd_schemas_when_rendered() -> None:
    custom = [(name, obj) for name in KUSTOMIZATIONS for obj in render(name) if _is_custom(obj)]
    kinds = {obj["kind"] for _, obj in custom}
    assert {"ServiceMonitor", "InferenceService"} <= kinds, kinds
    for name, obj in custom:
        assert not crd_errors(obj), f"{name}: {obj['kind']} {obj['metadata']['name']}: {crd_errors(obj)}"


@pytest.mark.parametrize(
    ("name", "kind", "path", "typo"),
    [
        ("base", "ServiceMonitor", ("spec", "endpoints", 0), "prot"),
        ("kserve", "InferenceService", ("spec", "predictor", "model"), "storageURI"),
    ],
)
def test_crd_schema_refuses_a_misspelled_field_when_validating(
    name: str, kind: str, path: tuple[Any, ...], typo: str
) -> None:
    obj = json.loads(json.dumps(objects(name, kind)[0]))
    node = obj
    for key in path:
        node = node[key]
    node[typo] = "x"
    assert any(typo in error for error in crd_errors(obj)), crd_errors(obj)


def test_vendored_schemas_name_their_source_and_release_when_listed() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    files = sorted(path.name for path in SCHEMAS.glob("*.json"))
    assert files
    for file in files:
        row = next((line for line in readme.splitlines() if f"`{file}`" in line), "")
        assert re.search(r"https://raw\.githubusercontent\.com/\S+/v\d+\.\d+\.\d+/\S+\.yaml", row), file


# -- the serving container against aigi serve ----------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVING)
def test_serving_command_is_the_images_entry_command_when_rendered(name: str) -> None:
    from aigi import server_commands

    if not hasattr(server_commands, "container_command"):
        pytest.skip("aigi.server_commands.container_command() does not exist in this checkout")
    assert serving_container(name)["command"] == server_commands.container_command()


@pytest.mark.parametrize("name", SERVING)
def test_container_ports_are_the_ones_aigi_serve_listens_on_when_parsed(name: str) -> None:
    args, defaults = serve_args(name), serve_defaults()
    ports = {entry["name"]: entry["containerPort"] for entry in serving_container(name)["ports"]}
    listening = {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}
    assert ports == {**listening, "health": args.health_port}
    # the ports the docs and clients assume (aigi predict --url HOST:8001) are aigi serve's own defaults
    assert listening == {"http": defaults.http_port, "grpc": defaults.grpc_port, "metrics": defaults.metrics_port}
    assert args.host == "0.0.0.0", "bound to loopback, no probe or Service could reach the server"
    assert not args.no_watchdog, "without the watchdog there is no health port for the probes"


@pytest.mark.parametrize("name", SERVING)
def test_probes_ask_aigi_health_port_not_triton_readiness_when_rendered(name: str) -> None:
    container, args = serving_container(name), serve_args(name)
    expected = {"readinessProbe": "/ready", "livenessProbe": "/live", "startupProbe": "/live"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{name}: {probe} asks {get['path']}"
        assert port_number(get["port"], container) == args.health_port, f"{name}: {probe} port"


def test_probe_paths_answer_the_watchdogs_state_when_served(monkeypatch: pytest.MonkeyPatch) -> None:
    from aigi import watchdog as watchdog_module
    from aigi.health import CanaryResult

    class Server:  # never asked for anything but the canary's URL: the canary is replaced below
        running = True
        returncode = None
        endpoints = {"http_url": "http://127.0.0.1:9"}

    container = serving_container("base")
    ready_path = container["readinessProbe"]["httpGet"]["path"]
    live_path = container["livenessProbe"]["httpGet"]["path"]
    watchdog = watchdog_module.Watchdog(Server(), interval_s=3600)
    endpoint = watchdog_module.HealthEndpoint(watchdog, port=0).start()

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}{path}", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        assert (status(ready_path), status(live_path)) == (503, 200)  # starting: alive, no canary passed yet
        monkeypatch.setattr(watchdog_module, "canary", lambda *_: CanaryResult(True, 0.01, "p_fake=0.5"))
        assert watchdog.check_once()
        assert (status(ready_path), status(live_path)) == (200, 200)
        assert status("/v2/health/ready") == 404  # not a path of aigi's health port
    finally:
        endpoint.stop()


@pytest.mark.parametrize("name", SERVING)
def test_startup_probe_outlasts_model_loading_when_aigi_serve_waits(name: str) -> None:
    probe, args = serving_container(name)["startupProbe"], serve_args(name)
    budget = probe["failureThreshold"] * probe["periodSeconds"]
    # aigi serve opens the health port after Triton is ready (--ready-timeout) and the first canary ran
    assert budget >= args.ready_timeout + args.canary_timeout, f"{name}: {budget} s"
    if is_gpu(name):
        assert budget >= 600, f"{name}: {budget} s is short for TensorRT engines and CUDA on a cold node"


@pytest.mark.parametrize("name", SERVING)
def test_model_repository_is_mounted_read_only_where_aigi_serve_reads_it_when_rendered(name: str) -> None:
    args, spec = serve_args(name), pod_spec(name)
    mounts = {mount["mountPath"]: mount for mount in serving_container(name)["volumeMounts"]}
    repo = mounts.get(str(args.repo))
    assert repo and repo.get("readOnly") is True, f"{name}: nothing read-only at {args.repo}"
    volume = next(volume for volume in spec["volumes"] if volume["name"] == repo["name"])
    if "persistentVolumeClaim" in volume:
        claim = volume["persistentVolumeClaim"]["claimName"]
        assert one(name, "PersistentVolumeClaim", claim)
        assert volume["persistentVolumeClaim"].get("readOnly") is True
    else:  # the object-storage variant: an emptyDir filled by an init container before aigi serve starts
        assert "emptyDir" in volume, f"{name}: model repository volume {volume}"
        writers = [
            init
            for init in spec.get("initContainers", [])
            for mount in init.get("volumeMounts", [])
            if mount["name"] == repo["name"] and mount["mountPath"] == str(args.repo) and not mount.get("readOnly")
        ]
        assert writers, f"{name}: no init container fills {args.repo}"


def test_base_serves_the_repository_from_a_persistent_volume_claim_when_rendered() -> None:
    volumes = {volume["name"]: volume for volume in pod_spec("base")["volumes"]}
    assert "persistentVolumeClaim" in volumes["model-repository"]


def test_object_storage_variant_copies_s3_or_gs_into_the_repository_when_rendered() -> None:
    name = "overlays/gpu-object-storage"
    assert not objects(name, "PersistentVolumeClaim"), "the object-storage variant needs no shared volume"
    sync = next(init for init in pod_spec(name)["initContainers"] if init["name"] == "model-sync")
    script = " ".join(sync["command"])
    assert "s3://" in script and "gs://" in script and "rclone copy" in script
    config_maps = {obj["metadata"]["name"]: obj for obj in objects(name, "ConfigMap")}
    source = next(ref["configMapRef"]["name"] for ref in sync["envFrom"] if "configMapRef" in ref)
    assert source in config_maps, f"envFrom names {source}, rendered {sorted(config_maps)}"
    assert re.match(r"(s3|gs)://", config_maps[source]["data"]["MODEL_REPOSITORY_URI"])


@pytest.mark.parametrize("name", SERVING)
def test_admin_key_secret_is_mounted_where_aigi_serve_reads_it_when_rendered(name: str) -> None:
    args, spec = serve_args(name), pod_spec(name)
    key_file = Path(args.admin_key_file)
    mount = next(m for m in serving_container(name)["volumeMounts"] if m["mountPath"] == str(key_file.parent))
    assert mount.get("readOnly") is True
    secret = next(volume for volume in spec["volumes"] if volume["name"] == mount["name"])["secret"]
    assert secret["secretName"] == "aigi-admin-key"
    assert [item["path"] for item in secret["items"]] == [key_file.name]
    assert secret["defaultMode"] & 0o007 == 0, f"{name}: the key file would be readable by others"
    assert spec["securityContext"].get("fsGroup") is not None, "without fsGroup the root-owned key is unreadable"


def test_admin_key_is_accepted_when_written_as_the_kubelet_writes_secrets(tmp_path: Path) -> None:
    from aigi.server_commands import admin_key

    secret = next(v for v in pod_spec("base")["volumes"] if v["name"] == "admin-key")["secret"]
    key_file = tmp_path / "admin-key"
    key_file.write_text("k" * 32 + "\n")
    # with an fsGroup the kubelet ORs group read into the mode (kubernetes/kubernetes#57923)
    key_file.chmod(secret["defaultMode"] | stat.S_IRGRP)
    assert admin_key(key_file) == "k" * 32


@pytest.mark.parametrize("name", SERVING)
def test_pod_runs_non_root_with_a_read_only_root_and_no_capabilities_when_rendered(name: str) -> None:
    from aigi import server_commands

    spec = pod_spec(name)
    uid = getattr(server_commands, "CONTAINER_UID", 10001)
    context = spec["securityContext"]
    assert (context["runAsNonRoot"], context["runAsUser"], context["fsGroup"]) == (True, uid, context["runAsGroup"])
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["readOnlyRootFilesystem"] is True, container["name"]
        assert security["capabilities"]["drop"] == ["ALL"], container["name"]
        assert container["resources"]["limits"].get("memory"), f"{container['name']} has no memory limit"
        assert container["resources"]["requests"].get("cpu"), f"{container['name']} has no cpu request"


@pytest.mark.parametrize("name", SERVING)
def test_pod_shares_its_process_namespace_so_restarted_stubs_are_reaped_when_rendered(name: str) -> None:
    # aigi serve restarts tritonserver in place; the pause process (PID 1 of a shared namespace) reaps the old stubs,
    # as `docker run --init` does in deploy/docker/README.md
    assert pod_spec(name).get("shareProcessNamespace") is True


@pytest.mark.parametrize("name", SERVING)
def test_termination_grace_covers_prestop_canary_and_drain_when_stopping(name: str) -> None:
    from aigi.server import TritonServer

    spec, args = pod_spec(name), serve_args(name)
    command = serving_container(name)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    exit_timeout = inspect.signature(TritonServer).parameters["exit_timeout_s"].default
    # aigi serve on SIGTERM: joins the watchdog (a canary may be in flight), then stops Triton (exit timeout + 10 s)
    needed = int(command[1]) + args.canary_timeout + exit_timeout + 10
    assert spec["terminationGracePeriodSeconds"] >= needed, f"{name}: {needed} s needed"


@pytest.mark.parametrize("name", SERVING)
def test_gpu_resources_and_scheduling_appear_only_in_gpu_overlays_when_rendered(name: str) -> None:
    spec, limits = pod_spec(name), serving_container(name)["resources"]["limits"]
    if name.startswith("overlays/gpu"):
        assert limits["nvidia.com/gpu"] == 1
        assert any(toleration["key"] == "nvidia.com/gpu" for toleration in spec["tolerations"])
        assert spec["nodeSelector"]
    else:
        assert "nvidia.com/gpu" not in limits and "tolerations" not in spec


def test_serving_image_is_tagged_with_aigis_version_when_rendered() -> None:
    from aigi import __version__, server_commands

    expected = f"aigi-triton:{__version__}"
    if hasattr(server_commands, "image_name"):
        assert server_commands.image_name() == expected
    for name in SERVING:
        assert serving_container(name)["image"] == expected, name
    isvc = objects("kserve", "InferenceService")[0]
    assert isvc["spec"]["predictor"]["model"]["image"] == expected


# -- Services, disruption budget, autoscaler, scraping -------------------------------------------------------------


@pytest.mark.parametrize("name", SERVING)
def test_services_expose_http_grpc_metrics_on_the_servers_ports_when_rendered(name: str) -> None:
    container, args = serving_container(name), serve_args(name)
    pod_labels = one(name, "Deployment", DEPLOYMENT)["spec"]["template"]["metadata"]["labels"]
    main = one(name, "Service", "aigi")
    ports = {port["name"]: port for port in main["spec"]["ports"]}
    expected = {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}
    assert set(ports) == set(expected), "the health port is for the kubelet only"
    for port_name, number in expected.items():
        assert ports[port_name]["port"] == number
        assert port_number(ports[port_name]["targetPort"], container) == number
    headless = one(name, "Service", "aigi-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [(p["name"], p["port"]) for p in headless["spec"]["ports"]] == [("grpc", args.grpc_port)]
    for service in (main, headless):
        assert selects(service["spec"]["selector"], pod_labels), service["metadata"]["name"]


@pytest.mark.parametrize("name", SERVING)
def test_disruption_budget_keeps_a_pod_serving_when_nodes_drain(name: str) -> None:
    pod_labels = one(name, "Deployment", DEPLOYMENT)["spec"]["template"]["metadata"]["labels"]
    budget = one(name, "PodDisruptionBudget", DEPLOYMENT)["spec"]
    hpa = one(name, "HorizontalPodAutoscaler", DEPLOYMENT)["spec"]
    assert selects(budget["selector"]["matchLabels"], pod_labels)
    assert hpa["minReplicas"] - budget["maxUnavailable"] >= 1


def adapter_rules() -> list[dict[str, Any]]:
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


@pytest.mark.parametrize("name", SERVING)
def test_autoscaler_scales_on_the_adapters_queue_metric_with_cpu_fallback_when_rendered(name: str) -> None:
    hpa = one(name, "HorizontalPodAutoscaler", DEPLOYMENT)["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT}
    by_type = {metric["type"]: metric for metric in hpa["metrics"]}
    served = {rule["name"]["as"] for rule in adapter_rules()}
    assert by_type["Pods"]["pods"]["metric"]["name"] in served
    assert by_type["Pods"]["pods"]["target"]["type"] == "AverageValue"
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    assert by_type["Resource"]["resource"]["target"]["type"] == "Utilization"
    assert serving_container(name)["resources"]["requests"]["cpu"], "CPU utilization needs a CPU request"


def test_adapter_rule_maps_triton_series_to_pods_when_read() -> None:
    for rule in adapter_rules():
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        assert re.search(rule["name"]["matches"], metric_names(rule["seriesQuery"]).pop())


@pytest.mark.parametrize("name", SERVING)
def test_service_monitor_scrapes_each_pods_metrics_port_once_when_rendered(name: str) -> None:
    args, container = serve_args(name), serving_container(name)
    monitor = one(name, "ServiceMonitor", DEPLOYMENT)["spec"]
    selector = monitor["selector"]["matchLabels"]
    chosen = [s for s in objects(name, "Service") if selects(selector, s["metadata"]["labels"])]
    endpoint_ports = {endpoint["port"] for endpoint in monitor["endpoints"]}
    scraped = [(s["metadata"]["name"], p) for s in chosen for p in s["spec"]["ports"] if p["name"] in endpoint_ports]
    assert len(scraped) == 1, f"{name}: each pod would be scraped {len(scraped)} times"
    assert port_number(scraped[0][1]["targetPort"], container) == args.metrics_port
    assert [endpoint["path"] for endpoint in monitor["endpoints"]] == ["/metrics"]


# -- KServe -------------------------------------------------------------------------------------------------------


def kserve_model() -> dict[str, Any]:
    return objects("kserve", "InferenceService")[0]["spec"]["predictor"]["model"]


def test_inference_service_uses_kserves_triton_runtime_on_object_storage_when_rendered() -> None:
    model = kserve_model()
    assert model["modelFormat"]["name"] == "triton"
    assert model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] == "v2"
    assert re.match(r"(s3|gs)://", model["storageUri"])


def test_inference_service_keeps_the_restricted_apis_and_summary_metrics_when_rendered() -> None:
    from aigi.server import restricted_api_args

    model, placeholder = kserve_model(), "K" * 24
    expected = [arg.replace(placeholder, "$(AIGI_ADMIN_KEY)") for arg in restricted_api_args(placeholder)]
    assert set(expected) <= set(model["args"])
    assert "--metrics-config=summary_latencies=true" in model["args"]
    key = next(env for env in model["env"] if env["name"] == "AIGI_ADMIN_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "aigi-admin-key", "key": "admin-key"}


def test_inference_service_probes_run_aigis_canary_against_the_runtimes_http_port_when_rendered() -> None:
    model = kserve_model()
    for probe in ("readinessProbe", "livenessProbe"):
        args = parse_aigi(model[probe]["exec"]["command"])
        assert args.command == "health", probe
        assert args.url == f"127.0.0.1:{KSERVE_TRITON_HTTP_PORT}", probe
        assert model[probe]["timeoutSeconds"] > args.timeout, f"{probe}: the kubelet would cut the canary short"


# -- Grafana and the metrics Triton exports ------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: every ``nv_*`` word and every word right before a ``{`` selector."""
    return set(re.findall(r"\bnv_[a-z0-9_]+", expr)) | set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr))


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    board = dashboard()
    queries = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    variables = board["templating"]["list"]
    return queries + [variable["query"]["query"] for variable in variables if variable["type"] == "query"]


def test_dashboard_is_grafana_json_with_unique_panels_when_loaded() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(set(refs)) == len(refs) and all(target["expr"] for target in panel["targets"])


def test_dashboard_plots_throughput_quantiles_queue_compute_failures_and_gpu_when_loaded() -> None:
    text = "\n".join(dashboard_queries())
    for metric in (
        "nv_inference_request_success",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_request_failure",
        "nv_gpu_utilization",
    ):
        assert metric in metric_names(text), metric
    for quantile in ("0.5", "0.99"):
        assert re.search(rf'nv_inference_request_summary_us\{{[^}}]*quantile="{quantile}"', text), quantile
    detector = {  # the Python models' own metrics (model_repository/python_models)
        "aigi_images_refused_total",
        "aigi_verdicts_total",
        "aigi_p_fake_bucket",
        "aigi_preprocess_duration_us_bucket",
        "aigi_image_pixels_bucket",
        "aigi_image_bytes_sum",
    }
    assert detector <= metric_names(text), sorted(detector - metric_names(text))


def exported_metric_names(metrics_text: str) -> set[str]:
    """Names in a Prometheus exposition: each family, plus ``_count``/``_sum`` of summaries and histograms and
    ``_bucket`` of histograms."""
    names = set()
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, re.MULTILINE):
        names.add(family)
        if kind in ("summary", "histogram"):
            names |= {f"{family}_count", f"{family}_sum"}
        if kind == "histogram":
            names.add(f"{family}_bucket")
    return names


@pytest.mark.triton
def test_dashboard_and_adapter_name_only_metrics_triton_exports_when_scraped(triton_server: Any) -> None:
    from aigi.health import canary

    assert canary(triton_server.endpoints["http_url"], "aigi", 10).ok  # every per-model series exists now
    with urllib.request.urlopen(triton_server.endpoints["metrics_url"], timeout=10) as response:
        exported = exported_metric_names(response.read().decode())
    assert "nv_inference_request_success" in exported
    assert {"aigi_images_refused_total", "aigi_p_fake_bucket"} <= exported  # the Python models' custom metrics
    queries = dashboard_queries() + [
        text for rule in adapter_rules() for text in (rule["seriesQuery"], rule["metricsQuery"])
    ]
    used = set().union(*(metric_names(query) for query in queries))
    missing = sorted(used - exported - GPU_METRICS)
    summaries = [name for name in missing if "_summary_" in name]
    assert not summaries, (
        f"Triton as aigi serve starts it exports no {summaries}: the dashboard's p50/p99 panels stay empty until "
        "aigi.server.TritonServer.command passes --metrics-config=summary_latencies=true"
    )
    assert not missing, f"queries name metrics Triton does not export: {missing}"
