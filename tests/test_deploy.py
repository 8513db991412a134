"""Deployment artifacts: the Dockerfile, the Kubernetes sidecar example, the Helm chart, docker-compose.

No Docker engine, cluster or helm binary is needed: files are parsed, every proxy config they carry is
loaded with the real loader (with the environment the container would get), and the settings that must
agree across files (ports, probes, grace periods, mounts, users) are checked against each other. When
helm (the binary, or the helm-python-sdk package) is available, the chart is also rendered.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.loading import ConfigError, Loaded, load_config
from proxy.units import parse_duration

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
CHART = DEPLOY / "helm" / "shadow-proxy"
COMPOSE = DEPLOY / "docker-compose.yml"
CONFIG_PATH = "/etc/shadow-proxy/config.yaml"
DATA_DIR = "/var/lib/shadow-proxy"
RSS_MIB = 150  # steady-state RSS the resources are sized for


# --- helpers ----------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (a silent override in a manifest)."""


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge"]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {sorted(dupes)}", node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_docs(path: Path) -> list[Any]:
    return [d for d in yaml.load_all(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) if d is not None]


def deploy_yaml_files() -> list[Path]:
    templates = CHART / "templates"
    files = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]
    return sorted(p for p in files if templates not in p.parents)


def load_proxy_config(text: str, tmp_path: Path, environ: dict[str, str]) -> Loaded:
    """Load a config the way the container does: from a file, with the container's SHADOW_PROXY_* env."""
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        return load_config(path, environ=environ)
    except ConfigError as exc:
        pytest.fail("the config does not load:\n" + "\n".join(exc.problems))


def seconds(value: str) -> float:
    return parse_duration(value)


def mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi|M|G)", str(quantity)).groups()
    return float(number) * {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}[unit]


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's literal env values (secretKeyRef values are unknown here)."""
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def prestop_sleep(container: dict[str, Any]) -> float:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", command
    return float(command[1])


def mount_for(container: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The volume mount that holds ``path`` (the longest matching mount path)."""
    mounts = [m for m in container.get("volumeMounts", []) if (path + "/").startswith(m["mountPath"].rstrip("/") + "/")]
    return max(mounts, key=lambda m: len(m["mountPath"]), default=None)


def written_dirs(loaded: Loaded) -> list[str]:
    audit = loaded.config.audit
    dirs = [audit.spill_dir]
    if audit.sink.startswith("file://"):
        dirs.append(audit.sink[len("file://") :])
    return dirs


# --- every YAML file --------------------------------------------------------------------------


@pytest.mark.parametrize("path", deploy_yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_deploy_yaml_file_parses_without_duplicate_keys(path: Path) -> None:
    assert load_docs(path), f"{path} has no document"


def test_deploy_has_the_expected_pieces() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in deploy_yaml_files()}
    assert {"docker-compose.yml", "compose/config.yaml", "docker/config.yaml"} <= names
    assert {"kubernetes/decision-service.yaml", "kubernetes/shadow-proxy-config.yaml", "kubernetes/redis.yaml"} <= names
    assert {"helm/shadow-proxy/Chart.yaml", "helm/shadow-proxy/values.yaml"} <= names
    assert (DEPLOY / "README.md").is_file() and (CHART / "README.md").is_file()


# --- Kubernetes sidecar example ---------------------------------------------------------------


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_docs(path) if "kind" in doc]


def k8s(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def sidecar_pod() -> dict[str, Any]:
    return k8s("Deployment", "decision-service")["spec"]["template"]


def containers() -> tuple[dict[str, Any], dict[str, Any]]:
    by_name = {c["name"]: c for c in sidecar_pod()["spec"]["containers"]}
    return by_name["app"], by_name["shadow-proxy"]


@pytest.fixture
def k8s_config(tmp_path: Path) -> Loaded:
    config_map = k8s("ConfigMap", "decision-service-shadow-proxy")
    _, proxy = containers()
    return load_proxy_config(config_map["data"]["config.yaml"], tmp_path, plain_env(proxy))


def test_k8s_configmap_config_validates_with_the_real_loader(k8s_config: Loaded) -> None:
    config = k8s_config.config
    assert config.admin.host == "0.0.0.0"  # probes and Prometheus come from outside the pod
    assert config.store.url.startswith("redis://")  # replicas share budgets and stages
    assert k8s_config.policies, "the route's policy resolves (shipped with the package)"


def test_k8s_proxy_forwards_to_the_app_on_localhost(k8s_config: Loaded) -> None:
    app, _ = containers()
    app_port = port_number(app, "app")
    for url in [k8s_config.config.default_upstream, *(r.primary.url for r in k8s_config.config.routes)]:
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == ("127.0.0.1", app_port), url
    for route in k8s_config.config.routes:
        assert urlsplit(route.model.url).hostname.endswith(".svc.cluster.local"), "the model is a Service"


def test_k8s_service_targets_the_proxy_not_the_app(k8s_config: Loaded) -> None:
    _, proxy = containers()
    service = k8s("Service", "decision-service")
    assert service["spec"]["selector"].items() <= sidecar_pod()["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port_number(proxy, port["targetPort"]) == k8s_config.config.listen.port


def test_k8s_probes_hit_healthz_and_readyz_on_the_admin_port(k8s_config: Loaded) -> None:
    _, proxy = containers()
    admin_port = k8s_config.config.admin.port
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = proxy[probe]["httpGet"]
        assert get["path"] == path
        assert port_number(proxy, get["port"]) == admin_port
    annotations = sidecar_pod()["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == admin_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_k8s_grace_period_outlasts_prestop_and_the_proxy_drain(k8s_config: Loaded) -> None:
    app, proxy = containers()
    shutdown = k8s_config.config.shutdown
    period = sidecar_pod()["spec"]["terminationGracePeriodSeconds"]
    proxy_done = prestop_sleep(proxy) + shutdown.grace + shutdown.mirror_grace
    assert prestop_sleep(proxy) > 0, "endpoints need time to drop the pod before the proxy stops accepting"
    assert period > proxy_done, "SIGKILL would cut the drain and the audit seal"
    # The app is the primary: it must serve the proxy until the proxy's client requests are done.
    assert prestop_sleep(app) >= prestop_sleep(proxy) + shutdown.grace
    assert period > prestop_sleep(app)


def test_k8s_proxy_runs_non_root_on_a_read_only_root_and_writes_to_volumes(k8s_config: Loaded) -> None:
    _, proxy = containers()
    pod = sidecar_pod()["spec"]
    context = proxy["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["fsGroup"] == 10001, "volumes writable by the proxy's user"
    volumes = {v["name"]: v for v in pod["volumes"]}
    for directory in written_dirs(k8s_config):
        mount = mount_for(proxy, directory)
        assert mount is not None and not mount.get("readOnly"), f"{directory} is not on a writable volume"
        assert {"emptyDir", "persistentVolumeClaim"} & volumes[mount["name"]].keys()


def test_k8s_config_is_mounted_where_the_proxy_reads_it() -> None:
    _, proxy = containers()
    assert proxy["args"][:3] == ["run", "-c", CONFIG_PATH]
    mount = mount_for(proxy, CONFIG_PATH)
    assert mount is not None and mount["readOnly"] is True
    volume = next(v for v in sidecar_pod()["spec"]["volumes"] if v["name"] == mount["name"])
    config_map = k8s("ConfigMap", volume["configMap"]["name"])
    assert Path(CONFIG_PATH).name in config_map["data"]


def test_k8s_admin_token_comes_from_the_documented_secret(k8s_config: Loaded) -> None:
    _, proxy = containers()
    env = {e["name"]: e for e in proxy["env"]}
    ref = env[k8s_config.config.admin.token_env]["valueFrom"]["secretKeyRef"]
    secret = k8s("Secret", ref["name"])
    assert ref["key"] in secret["stringData"]
    assert "REPLACE" in secret["stringData"][ref["key"]], "the example carries a placeholder, never a token"
    kustomization = load_docs(K8S / "kustomization.yaml")[0]
    assert "admin-token-secret.yaml" not in kustomization["resources"], "a committed token is no secret"
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file()


def test_k8s_proxy_resources_fit_its_memory_footprint() -> None:
    _, proxy = containers()
    resources = proxy["resources"]
    assert mebibytes(resources["requests"]["memory"]) >= RSS_MIB
    assert mebibytes(resources["limits"]["memory"]) >= 2 * RSS_MIB


# --- docker-compose ---------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return load_docs(COMPOSE)[0]


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def proxy_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if s.get("command", [None])[:1] == ["run"]}


def test_compose_runs_two_proxy_replicas_on_one_config(tmp_path: Path) -> None:
    replicas = proxy_services()
    assert len(replicas) >= 2
    for name, service in replicas.items():
        config_path = service["command"][service["command"].index("-c") + 1]
        source = next(v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == config_path)
        assert (COMPOSE.parent / source).resolve() == DEPLOY / "compose" / "config.yaml", name
        assert service.get("read_only") is True
        assert any(v.split(":")[1] == DATA_DIR for v in service["volumes"]), f"{name}: no volume for {DATA_DIR}"


def test_compose_replicas_share_redis_for_store_and_audit(tmp_path: Path) -> None:
    services = compose()["services"]
    for name, service in proxy_services().items():
        loaded = load_proxy_config((DEPLOY / "compose" / "config.yaml").read_text(), tmp_path, compose_env(service))
        config = loaded.config
        for url in (config.store.url, config.audit.sink):
            assert urlsplit(url).scheme == "redis" and urlsplit(url).hostname in services, url
        assert config.admin.host == "0.0.0.0"
        assert all(d.startswith(DATA_DIR + "/") for d in written_dirs(loaded)), "the root filesystem is read-only"
        assert seconds(service["stop_grace_period"]) > config.shutdown.grace + config.shutdown.mirror_grace, name
        assert set(service["depends_on"]) >= {"redis", "stubs"}


def test_compose_upstreams_are_the_stubs_listening_on_all_interfaces(tmp_path: Path) -> None:
    stubs = compose()["services"]["stubs"]
    assert stubs["command"][:3] == ["stubs", "--host", "0.0.0.0"]
    config = load_proxy_config((DEPLOY / "compose" / "config.yaml").read_text(), tmp_path, {}).config
    for route in config.routes:
        assert (urlsplit(route.primary.url).hostname, urlsplit(route.primary.url).port) == ("stubs", 9001)
        assert (urlsplit(route.model.url).hostname, urlsplit(route.model.url).port) == ("stubs", 9002)


def test_compose_traffic_script_compiles() -> None:
    traffic = compose()["services"]["traffic"]
    assert traffic["profiles"] == ["traffic"], "opt-in: `up` alone starts no load"
    compile(traffic["command"][0], "traffic", "exec")


# --- Helm chart -------------------------------------------------------------------------------


def chart_values() -> dict[str, Any]:
    return load_docs(CHART / "values.yaml")[0]


def chart_config(values: dict[str, Any]) -> dict[str, Any]:
    """What templates/configmap.yaml renders: values.config with store.url from redis.url."""
    config = copy.deepcopy(values["config"])
    if values["redis"]["url"]:
        config["store"] = {**config.get("store", {}), "url": values["redis"]["url"]}
    return config


CHART_ENV = {"SHADOW_PROXY_ADMIN__HOST": "0.0.0.0"}  # set by templates/deployment.yaml


def test_helm_default_config_validates_with_the_real_loader(tmp_path: Path) -> None:
    values = chart_values()
    loaded = load_proxy_config(yaml.safe_dump(chart_config(values)), tmp_path, CHART_ENV)
    assert loaded.config.store.url == values["redis"]["url"]
    assert values["replicaCount"] == 1 or not loaded.config.store.url.startswith("memory://")
    assert all(d.startswith(DATA_DIR + "/") for d in written_dirs(loaded)), "the root filesystem is read-only"


def test_helm_probes_hit_healthz_and_readyz_on_the_admin_port() -> None:
    values = chart_values()
    assert values["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert values["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert re.search(r"- name: admin\s+containerPort: \{\{ include \"shadow-proxy.adminPort\" \. \}\}", deployment)


def test_helm_grace_period_outlasts_prestop_and_the_proxy_drain() -> None:
    values = chart_values()
    shutdown = values["config"]["shutdown"]
    needed = values["preStopSleepSeconds"] + seconds(shutdown["grace"]) + seconds(shutdown["mirror_grace"])
    assert values["preStopSleepSeconds"] > 0
    assert values["terminationGracePeriodSeconds"] > needed


def test_helm_defaults_run_non_root_read_only_with_budgeted_memory() -> None:
    values = chart_values()
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert values["podSecurityContext"]["runAsUser"] == 10001
    assert values["securityContext"]["readOnlyRootFilesystem"] is True
    assert values["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert mebibytes(values["resources"]["requests"]["memory"]) >= RSS_MIB
    assert values["metrics"]["serviceMonitor"]["enabled"] is False, "needs the Prometheus Operator's CRDs"
    assert values["podDisruptionBudget"]["enabled"] is True
    assert values["autoscaling"]["enabled"] is False


def render_chart() -> dict[str, list[dict[str, Any]]]:
    """The chart's manifests on default values, by kind: with helm if present, else helm-python-sdk, else skip."""
    if shutil.which("helm"):
        command = ["helm", "template", "decisions", str(CHART), "--namespace", "prod"]
        texts = [subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout]
    else:
        helm = pytest.importorskip("helm_python", reason="neither helm nor helm-python-sdk is installed")
        with helm.Chart.load(str(CHART)) as chart:
            rendered = chart.render({}, name="decisions", namespace="prod")
        texts = [text for name, text in rendered.items() if name.endswith(".yaml")]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if doc:
                by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def test_helm_chart_renders_a_config_the_loader_accepts(tmp_path: Path) -> None:
    rendered = render_chart()
    (config_map,) = rendered["ConfigMap"]
    text = config_map["data"]["config.yaml"]
    assert yaml.safe_load(text) == chart_config(chart_values()), "test's chart_config() is what the template renders"
    (deployment,) = rendered["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (proxy,) = pod["containers"]
    config = load_proxy_config(text, tmp_path, plain_env(proxy)).config
    assert config.admin.host == "0.0.0.0"
    assert port_number(proxy, proxy["readinessProbe"]["httpGet"]["port"]) == config.admin.port
    assert port_number(proxy, "http") == config.listen.port
    assert (
        pod["terminationGracePeriodSeconds"]
        > prestop_sleep(proxy) + config.shutdown.grace + config.shutdown.mirror_grace
    )
    assert {s["metadata"]["name"] for s in rendered["Service"]} == {
        "decisions-shadow-proxy",
        "decisions-shadow-proxy-admin",
    }
    assert "ServiceMonitor" not in rendered and "HorizontalPodAutoscaler" not in rendered


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions ``(NAME, arguments)`` per build stage, continuation lines joined, comments dropped.
    The first list holds what comes before the first FROM (global ARGs)."""
    stages: list[list[tuple[str, str]]] = [[]]
    logical = ""
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("#"):
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if logical.strip():
            name, _, args = logical.strip().partition(" ")
            if name.upper() == "FROM":
                stages.append([])
            stages[-1].append((name.upper(), args.strip()))
        logical = ""
    return stages


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [args for n, args in stage if n == name]


def test_dockerfile_runs_shadow_proxy_as_non_root() -> None:
    stages = dockerfile_stages()[1:]
    assert len(stages) >= 2, "multi-stage: the wheel is built apart from the runtime"
    runtime = stages[-1]
    assert json.loads(instructions(runtime, "ENTRYPOINT")[-1]) == ["shadow-proxy"]
    assert json.loads(instructions(runtime, "CMD")[-1]) == ["run", "-c", CONFIG_PATH]
    user = instructions(runtime, "USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and uid != "0", "numeric and non-root, so runAsNonRoot can verify it"
    assert uid == "10001"
    exposed = " ".join(instructions(runtime, "EXPOSE")).split()
    assert {"8080", "9901"} <= set(exposed)
    assert instructions(runtime, "STOPSIGNAL") == ["SIGTERM"]
    (healthcheck,) = instructions(runtime, "HEALTHCHECK")
    assert "/healthz" in healthcheck and "urllib" in healthcheck
    assert not re.search(r"\b(curl|wget)\b", healthcheck)
    assert instructions(runtime, "LABEL"), "OCI labels"


def test_dockerfile_installs_a_wheel_not_the_source_tree() -> None:
    preamble, *stages = dockerfile_stages()
    arg_images = dict(a.split("=", 1) for a in instructions(preamble, "ARG") if "=" in a)
    for stage in stages:
        image = instructions(stage, "FROM")[0].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: arg_images[m.group(1)], image)
        assert image == "python:3.11-slim"
    build = " ".join(instructions(stages[0], "RUN"))  # the first stage builds
    assert "pip wheel" in build and ".whl" in build
    assert not re.search(r"(\s-e\s|--editable)", build)
    runtime_copies = instructions(stages[-1], "COPY")
    assert any(c.startswith("--from=build ") for c in runtime_copies)
    assert not any(re.search(r"(^|\s)(proxy|policies)/?(\s|$)", c) for c in runtime_copies), "no source in runtime"


def test_image_default_config_validates_and_writes_only_under_the_volume(tmp_path: Path) -> None:
    runtime = dockerfile_stages()[-1]
    copies = [c.split() for c in instructions(runtime, "COPY") if not c.startswith("--")]
    (source,) = [src for src, dest in copies if dest == CONFIG_PATH]
    loaded = load_proxy_config((ROOT / source).read_text(), tmp_path, {})
    volumes = json.loads(instructions(runtime, "VOLUME")[-1])
    assert volumes == [DATA_DIR]
    assert all(d.startswith(DATA_DIR + "/") for d in written_dirs(loaded))
    assert loaded.config.admin.port == 9901 and loaded.config.listen.port == 8080


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def docker_ignores(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_drops_local_state() -> None:
    copied = []
    for stage in dockerfile_stages():
        for args in instructions(stage, "COPY"):
            if not args.startswith("--from"):
                copied += args.split()[:-1]
    assert copied
    for source in copied:
        source = source.rstrip("/")
        assert (ROOT / source).exists(), source
        assert not docker_ignores(source), f"{source} is copied by the Dockerfile but excluded by .dockerignore"
        if (ROOT / source).is_dir():
            for file in (ROOT / source).rglob("*.py"):
                if "__pycache__" not in file.parts:
                    assert not docker_ignores(str(file.relative_to(ROOT))), file
    for local in (
        ".venv",
        ".git",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        "audit",
        "audit-spill",
        "examples/audit",
        "bench/results",
        "bench/out",
        "tests",
        "proxy/__pycache__/cli.cpython-311.pyc",
    ):
        assert docker_ignores(local), f"{local} would be sent to the build"
