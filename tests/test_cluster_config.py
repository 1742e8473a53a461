"""Deployment files: Ray's own validators on ray_cluster.yaml and the KubeRay manifests,
structural checks on every YAML under cluster/, the MLflow deployment and the Dockerfile.

Fast: nothing is started; no Kubernetes, AWS or Docker is needed.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import check_legacy_fields, prepare_config, validate_config

from landmarks.config import load_config
from landmarks.registry import config_class_for_preset

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
IMAGE_PROJECT_DIR = "/home/ray/landmarks"  # WORKDIR of cluster/Dockerfile
NAMESPACE = "landmarks"


def launcher_config() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def cluster_docs() -> list[tuple[Path, dict]]:
    """Every YAML document under cluster/, with its file."""
    docs = []
    for path in sorted([*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def docs_of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in cluster_docs() if doc.get("kind") == kind]


def one_of_kind(kind: str, name: str | None = None) -> dict:
    found = [d for d in docs_of_kind(kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''} under cluster/, found {len(found)}"
    return found[0]


def gpu_count(container: dict) -> int:
    limits = container.get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def parse_memory_gi(quantity: str) -> float:
    match = re.fullmatch(r"(\d+)(Gi|Mi)", quantity)
    assert match, f"unexpected memory quantity {quantity!r}"
    return int(match[1]) / (1024 if match[2] == "Mi" else 1)


# ---------------------------------------------------------------------------------------------
# ray_cluster.yaml: the Ray cluster launcher config


def test_ray_cluster_yaml_passes_ray_validation():
    """What `ray up` does before it talks to AWS: fill defaults, merge commands, validate the schema."""
    prepared = prepare_config(copy.deepcopy(launcher_config()))
    validate_config(prepared)
    check_legacy_fields(prepared)  # the AWS provider's own precondition
    assert prepared["provider"]["type"] == "aws"
    # prepare_config merges setup_commands into both node roles: the project is installed everywhere.
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("-e ~/landmarks" in cmd for cmd in prepared[key]), key


@pytest.mark.parametrize("breakage", ["unknown_key", "node_type_without_resources", "bad_head_type"])
def test_ray_validation_rejects_broken_configs(breakage):
    """The validator used above is not a no-op: the same file, broken, fails it."""
    config = launcher_config()
    if breakage == "unknown_key":
        config["max_worker"] = 3
    elif breakage == "node_type_without_resources":
        del config["available_node_types"]["gpu_1x_a10g"]["resources"]
    else:
        config["head_node_type"] = "nope"
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(config))


def test_ray_cluster_node_types():
    config = launcher_config()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0, "the head should not run tasks"
    assert "InstanceMarketOptions" not in head["node_config"], "the head must be on-demand, not spot"

    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    by_instance = {t["node_config"]["InstanceType"]: t for t in gpu_types.values()}
    assert {"p4d.24xlarge", "p5.48xlarge", "g5.xlarge"} <= set(by_instance)
    for instance in ("p4d.24xlarge", "p5.48xlarge"):
        node = by_instance[instance]
        assert node["resources"]["GPU"] == 8
        assert node["min_workers"] == 0 and node["max_workers"] == 8
    assert by_instance["g5.xlarge"]["resources"]["GPU"] == 1
    for name, node in gpu_types.items():
        assert node["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
        assert node["node_config"]["IamInstanceProfile"] == head["node_config"]["IamInstanceProfile"], name
    images = {t["node_config"]["ImageId"] for t in types.values()}
    assert len(images) == 1 and next(iter(images)).startswith("resolve:ssm:/aws/service/deeplearning/")
    # Spot instances cannot be stopped: the launcher must terminate idle nodes.
    assert config["provider"]["cache_stopped_nodes"] is False


def test_ray_cluster_installs_this_project_with_this_ray():
    config = launcher_config()
    assert config["file_mounts"]["~/landmarks"] == "."
    setup = " ".join(config["setup_commands"])
    assert "uv pip install" in setup and "-e ~/landmarks" in setup
    pinned = re.search(r'"ray\[[a-z,]+\]==([0-9.]+)"', setup)
    assert pinned and pinned[1] == ray.__version__, "cluster nodes must run the Ray version of .venv"
    assert '"mlflow[auth]' in setup
    excluded = " ".join(config["rsync_exclude"])
    assert ".venv" in excluded and ".git" in excluded


def test_ray_cluster_start_commands():
    config = launcher_config()
    head, worker = " ".join(config["head_start_ray_commands"]), " ".join(config["worker_start_ray_commands"])
    for command in (head, worker):
        assert "export RAY_AUTH_MODE=token" in command
        assert "--object-spilling-directory" in command
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--dashboard-host" not in head, "the dashboard stays on the head's localhost (ssh tunnel)"
    assert "--address=$RAY_HEAD_IP:6379" in worker and "--object-store-memory=" in worker


# ---------------------------------------------------------------------------------------------
# cluster/: Kubernetes manifests


def test_every_cluster_yaml_parses_into_named_namespaced_objects():
    docs = cluster_docs()
    assert docs, "no YAML under cluster/"
    for path, doc in docs:
        where = f"{path.relative_to(ROOT)} ({doc.get('kind')})"
        assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"), where
        assert doc.get("metadata", {}).get("name"), where
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, where
        assert doc["kind"] not in {"Ingress", "Route", "Gateway"}, f"{where}: nothing is exposed publicly"
    kinds = {doc["kind"] for _, doc in docs}
    assert {"Namespace", "ServiceAccount", "RayCluster", "RayJob", "Deployment", "Service",
            "PersistentVolumeClaim"} <= kinds
    # Secrets are created by hand (cluster/README.md), never committed.
    assert "Secret" not in kinds


def check_ray_cluster_spec(spec: dict, where: str) -> dict:
    """Structural checks on a RayCluster spec; returns the autoscaler config Ray derives from it."""
    assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion must match the image's Ray"
    assert spec["authOptions"]["mode"] == "token", where
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", where
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", where
    groups = [head, *spec["workerGroupSpecs"]]
    for group in groups:
        containers = group["template"]["spec"]["containers"]
        assert containers and containers[0]["image"] == "landmarks:0.1.0", where
        assert isinstance(group["rayStartParams"], dict), where
        assert group["template"]["spec"]["serviceAccountName"] == "landmarks-ray", where
        assert group["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, where
        env = {e["name"]: e for e in containers[0].get("env", [])}
        assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http://mlflow.landmarks.svc"), where
        assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-client", where
    assert gpu_count(head["template"]["spec"]["containers"][0]) == 0, f"{where}: CPU head"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        assert gpu_count(container) > 0, f"{where}: worker group {group['groupName']} has no nvidia.com/gpu"
        assert container["resources"]["requests"] == container["resources"]["limits"], where
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), where
        # The object store lives in /dev/shm: the memory-backed volume must hold it.
        store_gi = int(group["rayStartParams"]["object-store-memory"]) / 1024**3
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory", where
        assert store_gi < parse_memory_gi(shm["emptyDir"]["sizeLimit"]), where
        assert store_gi <= parse_memory_gi(container["resources"]["limits"]["memory"]) / 4, where
    # Ray's KubeRay autoscaler parses the same spec (and runs validate_config on the result).
    cr = {"metadata": {"name": "check", "namespace": NAMESPACE}, "spec": spec}
    return _derive_autoscaling_config_from_ray_cr(cr)


def test_raycluster_manifest():
    cluster = one_of_kind("RayCluster", "landmarks")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    derived = check_ray_cluster_spec(cluster["spec"], "RayCluster landmarks")
    types = derived["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    assert types["gpu-8x"]["resources"]["GPU"] == 8 and types["gpu-8x"]["max_workers"] == 8
    assert types["gpu-8x"]["min_workers"] == 0, "GPU pods scale to zero when idle"
    assert types["gpu-1x"]["resources"]["GPU"] == 1


def test_rayjob_runs_pretraining_with_a_valid_config():
    job = one_of_kind("RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    derived = check_ray_cluster_spec(spec["rayClusterSpec"], "RayJob")

    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and argv[1] == f"{IMAGE_PROJECT_DIR}/jobs/pretrain.py"
    preset = argv[argv.index("--config") + 1]
    assert preset.startswith(IMAGE_PROJECT_DIR + "/"), "paths inside the image"
    local_preset = ROOT / preset.removeprefix(IMAGE_PROJECT_DIR + "/")
    assert local_preset.name == "pretrain_celeba_r50.yaml" and local_preset.is_file(), local_preset
    overrides = [a for a in argv[2:] if "=" in a]
    # The overrides must be keys the pretrain job accepts, with valid values.
    cfg = load_config(config_class_for_preset(local_preset), local_preset, overrides)
    assert cfg.data.path.startswith("s3://") and cfg.checkpoint.storage_path.startswith("s3://")
    assert cfg.max_failures == -1 or cfg.max_failures >= 5, "spot GPU pods: restart from checkpoints"
    # Ray Train's workers must fit the job's cluster: one GPU each, CPUs within the pod.
    gpu_groups = [t for name, t in derived["available_node_types"].items() if name != "headgroup"]
    total_gpus = sum(t["resources"]["GPU"] * t["max_workers"] for t in gpu_groups)
    assert cfg.ray.use_gpu is True and cfg.ray.num_workers * cfg.ray.gpus_per_worker == total_gpus
    per_pod = gpu_groups[0]["resources"]
    assert cfg.ray.cpus_per_worker * per_pod["GPU"] / cfg.ray.gpus_per_worker <= per_pod["CPU"]


def test_mlflow_deployment_uses_basic_auth_and_is_not_exposed():
    deployment = one_of_kind("Deployment", "mlflow")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    script = container["command"][0]
    assert script == f"{IMAGE_PROJECT_DIR}/cluster/mlflow_server.sh"
    script_text = (ROOT / script.removeprefix(IMAGE_PROJECT_DIR + "/")).read_text()
    assert "--app-name basic-auth" in script_text
    assert 'MLFLOW_HOST="${MLFLOW_HOST:-127.0.0.1}"' in script_text, "bound to localhost unless configured"

    env = {e["name"]: e for e in container["env"]}
    for name, key in [("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-password"),
                      ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask-secret-key")]:
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-auth", "key": key}, name
        assert "value" not in env[name]
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith(("sqlite:///", "postgresql"))
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert not pod.get("hostNetwork") and not any(p.get("hostPort") for p in container["ports"])

    services = docs_of_kind("Service")
    assert services, "the MLflow Service"
    for service in services:
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
        assert "externalIPs" not in service["spec"]
    mlflow_service = one_of_kind("Service", "mlflow")
    assert mlflow_service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


# ---------------------------------------------------------------------------------------------
# cluster/Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (CLUSTER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_cuda_base_project_install_non_root():
    steps = dockerfile_instructions()
    froms = [args for word, args in steps if word == "FROM"]
    final_stage = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    assert froms[-1].startswith("nvidia/cuda:") and "runtime" in froms[-1], "final stage on a CUDA base"
    runs = " ".join(args for word, args in final_stage if word == "RUN")
    assert re.search(r"uv pip install .*--no-deps \.", runs), "installs the project itself"
    assert "-r /tmp/build/pyproject.toml" in runs, "installs the project's dependencies"
    ray_arg = next(args for word, args in steps if word == "ARG" and args.startswith("RAY_VERSION="))
    assert ray_arg == f"RAY_VERSION={ray.__version__}"
    users = [args for word, args in final_stage if word == "USER"]
    assert users and users[-1] not in {"root", "0"} and not users[-1].startswith(("root:", "0:"))
    # Every file the image copies from the build context exists (and is let through the ignore file).
    allowed = (CLUSTER / "Dockerfile.dockerignore").read_text()
    for word, args in final_stage:
        if word == "COPY" and "--from=" not in args:
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert f"!{source}" in allowed, f"COPY {source}: excluded by Dockerfile.dockerignore"


def test_local_cluster_scripts_are_executable_and_use_separate_temp_dirs():
    up = (CLUSTER / "local_up.sh").read_text()
    for script in ("local_up.sh", "local_down.sh", "mlflow_server.sh"):
        assert (CLUSTER / script).stat().st_mode & 0o111, f"{script} is not executable"
    assert 'HEAD_DIR="$BASE_DIR/head"' in up and 'WORKER_DIR="$BASE_DIR/worker"' in up
    assert '--temp-dir "$HEAD_DIR"' in up and '--temp-dir "$WORKER_DIR"' in up
    assert "export RAY_AUTH_MODE=token" in up
    # Stopping is by recorded process group only: `ray stop` would also stop other people's Ray.
    for script in ("local_up.sh", "local_down.sh"):
        code = [ln for ln in (CLUSTER / script).read_text().splitlines() if not ln.lstrip().startswith("#")]
        assert not any(re.search(r"\bray\b.*\bstop\b", ln) for ln in code), script
