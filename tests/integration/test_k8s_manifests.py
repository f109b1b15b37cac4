"""k8s/ manifests: valid against the KubeRay CRD schemas, RayService in sync with the Serve config,
versions agreeing across Dockerfile, manifests and Python pins."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from medray.deploy import kuberay, versions
from medray.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT.parent / "shared" / "kuberay-crds"
K8S = REPO_ROOT / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
TEMPLATE = REPO_ROOT / kuberay.RAYSERVICE_TEMPLATE
SERVE_CONFIG = REPO_ROOT / kuberay.SERVE_CONFIG

# Stand-in for serve_configs/production.yaml where it does not exist (same shape as a Ray Serve config).
FIXTURE_SERVE_CONFIG = """\
proxy_location: EveryNode
http_options:
  host: 127.0.0.1
  port: 8000
applications:
  - name: slides
    route_prefix: /slides
    import_path: medray.serve.app:build_app
    args:
      model_uri: models:/medray-patches/1
    deployments:
      - name: Classifier
        ray_actor_options: {num_cpus: 1, num_gpus: 1}
        autoscaling_config: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 8}
"""


@pytest.fixture(scope="module")
def crds() -> Path:
    if not (CRD_DIR / "ray.io_rayclusters.yaml").is_file():
        pytest.skip(f"KubeRay CRD schemas not found at {CRD_DIR} (../shared is a dev/CI checkout only)")
    return CRD_DIR


def _write(path: Path, docs: list[dict]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def test_k8s_holds_every_kind_medray_ships():
    names = {p.name for p in MANIFESTS}
    assert {"raycluster.dev.yaml", "raycluster.prod.yaml", "rayjob.extract.yaml", "rayjob.train.yaml",
            "rayservice.prod.yaml", "configmap.medray.yaml", "secret.object-storage.example.yaml"} <= names


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)  # the template: via its rendering
def test_every_manifest_validates(crds, manifest):
    kuberay.validate(manifest, crds)


def test_wrong_type_unknown_field_and_missing_field_are_rejected(crds, tmp_path):
    doc = kuberay.load_documents(K8S / "raycluster.prod.yaml")[0]
    doc["spec"]["workerGroupSpecs"][0]["minReplicas"] = "two"
    doc["spec"]["workerGroupSpecs"][1]["replicaCount"] = 3
    del doc["spec"]["workerGroupSpecs"][1]["groupName"]
    bad = _write(tmp_path / "bad.yaml", [doc])
    problems = kuberay.validation_problems(bad, crds)
    assert any("workerGroupSpecs/0/minReplicas: 'two' is not of type 'integer'" in p for p in problems), problems
    assert any("'replicaCount' was unexpected" in p for p in problems), problems
    assert any("'groupName' is a required property" in p for p in problems), problems
    with pytest.raises(ConfigError, match=r"bad\.yaml: 3 problem\(s\)"):
        kuberay.validate(bad, crds)


def test_semantic_problems_are_rejected(crds, tmp_path):
    doc = kuberay.load_documents(K8S / "rayjob.train.yaml")[0]
    cluster = doc["spec"]["rayClusterSpec"]
    cluster["workerGroupSpecs"][0].update(minReplicas=5, maxReplicas=2)
    gpu = cluster["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
    del gpu["resources"]["limits"]["nvidia.com/gpu"]
    gpu["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "inline-secret"})
    doc["apiVersion"] = "ray.io/v2"
    problems = kuberay.validation_problems(_write(tmp_path / "job.yaml", [doc]), crds)
    assert problems == [f"{tmp_path / 'job.yaml'}[0] RayJob/medray-train: apiVersion: 'ray.io/v2' is not "
                        "served for RayJob; use one of ['ray.io/v1', 'ray.io/v1alpha1']"]
    doc["apiVersion"] = "ray.io/v1"
    problems = "\n".join(kuberay.validation_problems(_write(tmp_path / "job.yaml", [doc]), crds))
    assert "minReplicas 5 > maxReplicas 2" in problems
    assert "nvidia.com/gpu must be set in limits" in problems
    assert "AWS_SECRET_ACCESS_KEY is set inline" in problems


def test_core_manifests_are_checked_without_crds(tmp_path):
    config = kuberay.load_documents(K8S / "configmap.medray.yaml")[0]
    assert kuberay.validation_problems(K8S / "configmap.medray.yaml", None) == []
    config["data"]["PORT"] = 8000
    config["metadata"]["name"] = "Medray_Config"
    problems = "\n".join(kuberay.validation_problems(_write(tmp_path / "cm.yaml", [config]), None))
    assert "data/PORT: 8000 is not of type 'string'" in problems
    assert "metadata/name: 'Medray_Config' does not match" in problems
    with pytest.raises(ConfigError, match="needs the KubeRay CRDs"):
        kuberay.validation_problems(K8S / "raycluster.dev.yaml", None)


def test_openapi_conversion_handles_kubernetes_extensions():
    schema = kuberay.openapi_to_jsonschema({
        "type": "object",
        "properties": {
            "port": {"x-kubernetes-int-or-string": True},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
            "env": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                    "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
            "n": {"type": "integer", "format": "int32"},
        },
    })
    validator = kuberay._validator_class()(schema)
    assert not list(validator.iter_errors({"port": "http", "free": {"b": 1}, "env": [{"name": "A"}], "n": 3}))
    assert not list(validator.iter_errors({"port": 8080}))
    messages = [e.message for e in validator.iter_errors(
        {"port": 1.5, "other": 1, "env": [{"name": "A"}, {"name": "A"}], "n": 2**31})]
    assert len(messages) == 4, messages
    assert any("duplicate entry with name='A'" in m for m in messages)


def _render_repo(tmp_path: Path, serve_text: str) -> Path:
    """A copy of the files rendering needs, with the given Serve config."""
    (tmp_path / "serve_configs").mkdir()
    (tmp_path / kuberay.SERVE_CONFIG).write_text(serve_text)
    shutil.copytree(K8S, tmp_path / "k8s")
    return tmp_path


def test_rendered_rayservice_embeds_the_serve_config(crds, tmp_path):
    root = _render_repo(tmp_path, FIXTURE_SERVE_CONFIG)
    assert kuberay.main(["--repo-root", str(root), "render-rayservice"]) == 0
    manifest = root / kuberay.RAYSERVICE_OUTPUT
    assert manifest.read_text().startswith("# GENERATED")
    kuberay.validate(manifest, crds)
    serve = yaml.safe_load(kuberay.load_documents(manifest)[0]["spec"]["serveConfigV2"])
    expected = yaml.safe_load(FIXTURE_SERVE_CONFIG)
    assert serve["applications"] == expected["applications"]
    assert serve["http_options"] == {"host": "0.0.0.0", "port": 8000}  # pods listen on their address
    assert kuberay.check_rayservice(root) == []


def test_drift_check_fails_on_a_changed_serve_config(tmp_path):
    root = _render_repo(tmp_path, FIXTURE_SERVE_CONFIG)
    kuberay.main(["--repo-root", str(root), "render-rayservice"])
    (root / kuberay.SERVE_CONFIG).write_text(FIXTURE_SERVE_CONFIG.replace("max_replicas: 4", "max_replicas: 9"))
    diff = "\n".join(kuberay.check_rayservice(root))
    assert re.search(r"^-\s+max_replicas: 4$", diff, re.M) and re.search(r"^\+\s+max_replicas: 9$", diff, re.M), diff
    # A hand edit of the committed manifest is drift too.
    kuberay.main(["--repo-root", str(root), "render-rayservice"])
    manifest = root / kuberay.RAYSERVICE_OUTPUT
    manifest.write_text(manifest.read_text().replace("excludeHeadPodFromServeSvc: true",
                                                     "excludeHeadPodFromServeSvc: false"))
    assert kuberay.check_rayservice(root)


def test_committed_rayservice_matches_the_production_serve_config():
    assert SERVE_CONFIG.is_file(), f"{kuberay.SERVE_CONFIG} is missing: the RayService is rendered from it"
    diff = kuberay.check_rayservice(REPO_ROOT)
    assert diff == [], ("k8s/rayservice.prod.yaml is stale; run `python -m medray.deploy.kuberay "
                        "render-rayservice`\n" + "\n".join(diff))


def test_rayservice_pods_run_serve_behind_haproxy():
    """Every RayService pod gets medray's ingress mode (the switches Ray reads at start-up)."""
    from medray.serve.ingress_mode import active_mode, ingress_env

    service = yaml.safe_load((K8S / "rayservice.prod.yaml").read_text())
    spec = service["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    for pod in pods:
        for container in pod["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert {k: env.get(k) for k in ingress_env("haproxy")} == ingress_env("haproxy"), container["name"]
            assert active_mode(env) == "haproxy"


def test_render_rejects_a_serve_config_without_applications(tmp_path):
    root = _render_repo(tmp_path, "http_options: {host: 127.0.0.1}\n")
    with pytest.raises(ConfigError, match="no 'applications' list"):
        kuberay.render_rayservice(root / kuberay.SERVE_CONFIG, root / kuberay.RAYSERVICE_TEMPLATE)


def test_versions_agree():
    assert versions.version_problems(REPO_ROOT) == []
    args, froms = versions.dockerfile_args(REPO_ROOT / "Dockerfile")
    assert args["RAY_VERSION"] == versions.read_pins(REPO_ROOT).ray == "2.60.0"
    assert froms == ["rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${VARIANT}"]
    assert versions.expand(froms[0], {**args, "VARIANT": "gpu"}) == "rayproject/ray:2.60.0-py311-gpu"


def _version_repo(tmp_path: Path) -> Path:
    for name in ("Dockerfile", "requirements.txt", "pyproject.toml", "Makefile"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    shutil.copytree(K8S, tmp_path / "k8s")
    assert versions.version_problems(tmp_path) == []
    return tmp_path


def test_mismatched_versions_are_reported(tmp_path):
    root = _version_repo(tmp_path)
    dockerfile = root / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("ARG PYTHON_TAG=py311", "ARG PYTHON_TAG=py310"))
    job = root / "k8s" / "rayjob.train.yaml"
    job.write_text(job.read_text().replace('rayVersion: "2.60.0"', 'rayVersion: "2.59.0"')
                   .replace("0.1.0-ray2.60.0-py311-gpu", "0.1.0-ray2.60.0-py311-cpu", 1))
    problems = "\n".join(versions.version_problems(root))
    assert "PYTHON_TAG=py310 (Python 3.10) is outside pyproject.toml requires-python >=3.11" in problems
    assert "rayjob.train.yaml:RayJob/medray-train/spec/rayClusterSpec: rayVersion 2.59.0" in problems
    assert "has variant 'cpu', expected 'gpu'" in problems
    assert "has py '311', expected '310'" in problems  # manifests no longer match the Dockerfile


def test_mismatched_ray_pin_is_reported(tmp_path):
    root = _version_repo(tmp_path)
    requirements = root / "requirements.txt"
    requirements.write_text(requirements.read_text().replace("==2.60.0", "==2.61.0"))
    problems = versions.version_problems(root)
    assert "pyproject.toml: ray==2.60.* excludes the pinned ray==2.61.0" in problems
    assert "Dockerfile: ARG RAY_VERSION=2.60.0 but requirements.txt pins ray==2.61.0" in problems
    assert versions.main(["--repo-root", str(root)]) == 1


def test_job_entrypoints_and_configs_exist():
    """Every RayJob entrypoint names a script and --config file that the image copies from jobs/."""
    for manifest in K8S.glob("rayjob.*.yaml"):
        words = kuberay.load_documents(manifest)[0]["spec"]["entrypoint"].split()
        script, config = words[1], words[words.index("--config") + 1]
        for path in (script, config):
            assert (REPO_ROOT / path).is_file(), f"{manifest.name} names {path}, which does not exist"
        assert words[0] == "python" and script.startswith("jobs/") and config.startswith("jobs/configs/")
