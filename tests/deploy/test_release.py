"""The GitHub workflows and what the release publishes: actionlint passes on every workflow, every action
is pinned to a commit, and the images .github/workflows/release.yaml pushes are the chart's default images.

The release's chart job is partly run here too: its own shell steps rewrite the owner, package the chart and
compare the packaged chart's images with the pushed ones (cosign replaced by a stub that records its calls).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import CHART, HELM, ROOT, helm_template_error, pod_specs, render

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
RELEASE = ROOT / ".github" / "workflows" / "release.yaml"
TOOLS = ROOT / "build" / "tools"
ACTIONLINT = TOOLS / "venv" / "bin" / "actionlint"
SHELLCHECK = TOOLS / "venv" / "bin" / "shellcheck"
VERSION = "9.8.7"  # the tag v9.8.7
OIDC_ISSUER = "https://token.actions.githubusercontent.com"
# scripts/images.sh target → the release's matrix entry that builds the same image.
IMAGES_SH_TARGETS = {"web": "web", "model": "model-cpu", "gpu": "model-gpu"}

Doc = dict[str, Any]


def load(path: Path) -> Doc:
    doc = yaml.safe_load(path.read_text())
    if True in doc:  # YAML 1.1 reads the key `on` as true
        doc["on"] = doc.pop(True)
    return doc


def steps(job: Doc) -> list[Doc]:
    return job.get("steps", [])


def step(job: Doc, *, uses: str | None = None, name: str | None = None) -> Doc:
    """The one step of `job` that uses the action `uses` (any version) or is called `name`."""
    found = [
        s
        for s in steps(job)
        if (uses and s.get("uses", "").split("@")[0] == uses) or (name and s.get("name") == name)
    ]
    assert len(found) == 1, f"expected one step {uses or name}, found {len(found)}"
    return found[0]


def evaluate(text: str, context: dict[str, str]) -> str:
    """`text` with each ${{ name }} replaced from `context`; an expression it does not know fails the test."""

    def value(match: re.Match[str]) -> str:
        name = match[1]
        assert name in context, f"unexpected expression ${{{{ {name} }}}} in {text!r}"
        return context[name]

    return re.sub(r"\$\{\{\s*(.*?)\s*\}\}", value, str(text))


def release_context(workflow: Doc) -> dict[str, str]:
    """What the expressions of a release of tag v<VERSION> by the chart's default owner evaluate to."""
    owner = workflow["env"]["CHART_OWNER"]
    context = {f"env.{key}": str(value) for key, value in workflow["env"].items()}
    context |= {
        "needs.meta.outputs.owner": owner,
        "needs.meta.outputs.version": VERSION,
        "github.server_url": "https://github.com",
        "github.repository": f"{owner}/zerolens",
        "github.workflow_ref": f"{owner}/zerolens/.github/workflows/release.yaml@refs/tags/v{VERSION}",
        "github.sha": "0" * 40,
    }
    return context


def pushed_images() -> dict[str, str]:
    """Matrix entry name → the image reference the images job pushes for it."""
    workflow = load(RELEASE)
    job = workflow["jobs"]["images"]
    build = step(job, uses="docker/build-push-action")["with"]
    pushed = {}
    for entry in job["strategy"]["matrix"]["include"]:
        context = release_context(workflow) | {f"matrix.{key}": str(value) for key, value in entry.items()}
        context |= {f"env.{key}": evaluate(value, context) for key, value in job.get("env", {}).items()}
        tags = re.split(r"[\s,]+", evaluate(build["tags"], context).strip())
        assert len(tags) == 1, f"{entry['name']}: one tag per image, the release's ({tags})"
        pushed[entry["name"]] = tags[0]
    return pushed


def chart_images(package: Path, *args: str) -> set[str]:
    """Every container image a render of the packaged chart names (the `helm test` pod included)."""
    done = subprocess.run(
        [str(HELM), "template", "zerolens", str(package), *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    return {c["image"] for _, spec in pod_specs(docs) for c in spec.get("containers", [])}


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart packaged as the release packages it for the tag v<VERSION>."""
    if not HELM.exists():
        pytest.fail(f"{HELM.relative_to(ROOT)} is missing: run scripts/deploy-tools.sh first", pytrace=False)
    out = tmp_path_factory.mktemp("release")
    subprocess.run(
        [str(HELM), "package", str(CHART), "--version", VERSION, "--app-version", VERSION, "-d", str(out)],
        check=True,
        capture_output=True,
    )
    return out / f"zerolens-{VERSION}.tgz"


# --- every workflow ---------------------------------------------------------------------------------------


def test_actionlint_passes_on_every_workflow() -> None:
    if not ACTIONLINT.exists():  # not a skip: this is the workflows' only check in `make test`
        pytest.fail(
            f"{ACTIONLINT.relative_to(ROOT)} is missing: run scripts/deploy-tools.sh first", pytrace=False
        )
    shellcheck = ["-shellcheck", str(SHELLCHECK)] if SHELLCHECK.exists() else []
    done = subprocess.run(
        [str(ACTIONLINT), "-no-color", *shellcheck, *map(str, WORKFLOWS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"actionlint:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit(path: Path) -> None:
    # A tag can be moved to other code; a commit cannot. The comment names the release the commit is, for
    # reading and for the bots that propose updates.
    pinned = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_./-]+)?@[0-9a-f]{40} # v\d+\.\d+\.\d+")
    lines = [line.strip() for line in path.read_text().splitlines()]
    uses = [line.split("uses:", 1)[1].strip() for line in lines if re.match(r"(- )?uses:", line)]
    for value in uses:
        if value.startswith("./"):
            continue  # an action of this repository, pinned by the checkout itself
        if value.startswith("docker://"):
            assert re.search(r"@sha256:[0-9a-f]{64}$", value), (
                f"{path.name}: {value} is not pinned to a digest"
            )
            continue
        assert pinned.fullmatch(value), f"{path.name}: uses: {value} is not <action>@<40-hex commit> # vX.Y.Z"
    # Every `uses:` the YAML holds was seen above (none hides in a flow mapping).
    workflow = load(path)
    parsed = [s["uses"] for job in workflow["jobs"].values() for s in steps(job) if "uses" in s]
    parsed += [job["uses"] for job in workflow["jobs"].values() if "uses" in job]
    assert len(parsed) == len(uses), (
        f"{path.name}: uses: found {len(uses)} times in the text, {len(parsed)} in the YAML"
    )


def test_each_action_release_has_one_commit() -> None:
    # The same release of an action is the same commit in every workflow, and a commit is one release.
    by_release: dict[str, set[str]] = {}
    by_commit: dict[str, set[str]] = {}
    for path in WORKFLOWS:
        for action, commit, version in re.findall(
            r"uses: *([^@\s]+)@([0-9a-f]{40}) # (v\S+)", path.read_text()
        ):
            by_release.setdefault(f"{action} {version}", set()).add(commit)
            by_commit.setdefault(f"{action}@{commit}", set()).add(version)
    assert by_release, "no pinned actions found"
    assert {k: v for k, v in by_release.items() if len(v) > 1} == {}
    assert {k: v for k, v in by_commit.items() if len(v) > 1} == {}


# --- the release workflow ---------------------------------------------------------------------------------


def test_release_runs_on_version_tags_with_least_privilege() -> None:
    workflow = load(RELEASE)
    assert workflow["on"] == {"push": {"tags": ["v*.*.*"]}}
    assert workflow["permissions"] == {}, "no permission by default; each job asks for its own"
    for name, job in workflow["jobs"].items():
        assert "permissions" in job, f"job {name} must name its permissions"
        permissions = job["permissions"]
        assert isinstance(permissions, dict), f"job {name}: {permissions} (write-all or read-all)"
        scripts = "\n".join(str(s.get("run", "")) for s in steps(job))
        signs = "cosign sign" in scripts
        pushes = signs or "push: true" in yaml.safe_dump(steps(job)) or "helm push" in scripts
        assert (permissions.get("id-token") == "write") == signs, f"job {name}: id-token write only to sign"
        assert (permissions.get("packages") == "write") == pushes, f"job {name}: packages write only to push"
        assert permissions.get("contents", "none") in ("read", "none"), f"job {name}: contents read at most"
        assert set(permissions) <= {"contents", "packages", "id-token"}, f"job {name}: {permissions}"
        for s in steps(job):
            if s.get("uses", "").startswith("actions/checkout@"):
                assert s.get("with", {}).get("persist-credentials") is False, (
                    f"job {name}: checkout keeps no token"
                )


def test_images_are_built_as_scripts_images_sh_builds_them() -> None:
    # The targets of scripts/images.sh: `web) build web "$TAG_WEB" Dockerfile.web ;;` and the like.
    text = (ROOT / "scripts" / "images.sh").read_text().replace("\\\n", " ")
    targets = {
        target: (dockerfile, sorted(re.findall(r"--build-arg (\S+)", args)))
        for target, dockerfile, args in re.findall(
            r"^\s*(web|model|gpu)\) build \S+ \S+ (\S+)(.*?);;", text, re.M
        )
    }
    assert sorted(targets) == sorted(IMAGES_SH_TARGETS)
    matrix = {e["name"]: e for e in load(RELEASE)["jobs"]["images"]["strategy"]["matrix"]["include"]}
    assert sorted(matrix) == sorted(IMAGES_SH_TARGETS.values())
    for target, (dockerfile, build_args) in targets.items():
        entry = matrix[IMAGES_SH_TARGETS[target]]
        assert entry["dockerfile"] == dockerfile
        assert sorted(str(entry["build-args"]).split()) == build_args, f"{entry['name']}: build args"


def test_images_carry_sbom_and_provenance_and_are_signed_by_digest() -> None:
    job = load(RELEASE)["jobs"]["images"]
    build = step(job, uses="docker/build-push-action")
    assert build["with"]["push"] is True
    assert build["with"]["sbom"] is True
    assert build["with"]["provenance"] == "mode=max"
    sign = step(job, name="Sign the pushed digest")
    assert sign["env"]["DIGEST"] == f"${{{{ steps.{build['id']}.outputs.digest }}}}"
    assert 'cosign sign --yes "$REGISTRY/$IMAGE@$DIGEST"' in sign["run"]
    step(job, uses="sigstore/cosign-installer")
    platforms = {e["name"]: e["platforms"].split(",") for e in job["strategy"]["matrix"]["include"]}
    assert platforms["web"] == platforms["model-cpu"] == ["linux/amd64", "linux/arm64"]
    assert platforms["model-gpu"] == ["linux/amd64"]


def test_pushed_images_are_the_charts_defaults(package: Path) -> None:
    pushed = pushed_images()
    owner = load(RELEASE)["env"]["CHART_OWNER"]
    assert pushed == {
        "web": f"ghcr.io/{owner}/zerolens-web:{VERSION}",
        "model-cpu": f"ghcr.io/{owner}/zerolens-model:{VERSION}-cpu",
        "model-gpu": f"ghcr.io/{owner}/zerolens-model:{VERSION}-gpu",
    }
    # values.yaml names the same registry and repositories ...
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for tier, entry in (("web", "web"), ("model", "model-cpu")):
        image = values[tier]["image"]
        registry, _, rest = pushed[entry].partition("/")
        assert (image["registry"], image["repository"], image["tag"]) == (registry, rest.split(":")[0], "")
    # ... and the chart packaged for the tag installs them: the CPU build by default, the GPU build on GPUs.
    assert chart_images(package) == {pushed["web"], pushed["model-cpu"]}
    gpu = ("-f", str(CHART / "ci" / "gpu.yaml"))
    assert chart_images(package, *gpu) == {pushed["web"], pushed["model-gpu"]}


def test_chart_version_and_app_version_come_from_the_tag(package: Path) -> None:
    done = subprocess.run(
        [str(HELM), "show", "chart", str(package)], capture_output=True, text=True, check=True
    )
    chart = yaml.safe_load(done.stdout)
    assert (chart["version"], chart["appVersion"]) == (VERSION, VERSION)
    job = load(RELEASE)["jobs"]["chart"]
    scripts = "\n".join(s.get("run", "") for s in steps(job))
    assert 'helm package helm/zerolens --version "$VERSION" --app-version "$VERSION"' in scripts
    assert 'helm push "$PACKAGE" "oci://$REGISTRY/$OWNER/charts"' in scripts
    assert 'cosign sign --yes "$REGISTRY/$OWNER/charts/zerolens@$digest"' in scripts
    assert job["needs"] == ["meta", "images"], "the chart is published after its images"


def test_release_uses_the_helm_the_chart_is_tested_with() -> None:
    pinned = re.search(r"^HELM_VERSION=(\S+)", (ROOT / "scripts" / "deploy-tools.sh").read_text(), re.M)
    assert pinned and load(RELEASE)["env"]["HELM_VERSION"] == pinned[1]


def run_step(job: Doc, name: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a release step's script as GitHub's runner runs `shell: bash`."""
    script = step(job, name=name)["run"]
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("owner", ["zerolens", "Someone-Else"])
def test_chart_job_publishes_a_chart_naming_the_images_pushed(owner: str, tmp_path: Path) -> None:
    # The chart job's own steps, on a copy of the chart: a release by the chart's owner leaves values.yaml
    # as it is; one by another owner (a fork) points the defaults at that owner's images. Both then pass the
    # check that the packaged chart names exactly the images pushed; cosign is a stub recording its calls.
    if not HELM.exists():
        pytest.fail(f"{HELM.relative_to(ROOT)} is missing: run scripts/deploy-tools.sh first", pytrace=False)
    workflow = load(RELEASE)
    job = workflow["jobs"]["chart"]
    shutil.copytree(CHART, tmp_path / "helm" / "zerolens")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cosign").write_text('#!/bin/sh\necho "$*" >>"$COSIGN_LOG"\n')
    (bin_dir / "cosign").chmod(0o755)
    (bin_dir / "helm").symlink_to(HELM)
    context = release_context(workflow) | {"needs.meta.outputs.owner": owner.lower()}
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "COSIGN_LOG": str(tmp_path / "log"),
    }
    env |= {key: evaluate(value, context) for key, value in workflow["env"].items()}
    env |= {key: evaluate(value, context) for key, value in job["env"].items()}
    for name in ("Default images of this owner", "Package (version and appVersion from the tag)"):
        done = run_step(job, name, env, tmp_path)
        assert done.returncode == 0, f"{name}:\n{done.stdout}{done.stderr}"
    name = "The chart installs exactly the images pushed, signed by this workflow"
    check = step(job, name=name)
    done = run_step(job, name, env | {k: evaluate(v, context) for k, v in check["env"].items()}, tmp_path)
    assert done.returncode == 0, f"{name}:\n{done.stdout}{done.stderr}"
    registry = f"ghcr.io/{owner.lower()}"
    expected = [
        f"{registry}/zerolens-web:{VERSION}",
        *(f"{registry}/zerolens-model:{VERSION}-{v}" for v in ("cpu", "gpu")),
    ]
    identity = f"https://github.com/{context['github.workflow_ref']}"
    assert (tmp_path / "log").read_text().splitlines() == [
        f"verify {image} --certificate-identity {identity} --certificate-oidc-issuer {OIDC_ISSUER}"
        for image in expected
    ]
    # The same check fails when the chart names an image the release did not push.
    values = tmp_path / "helm" / "zerolens" / "values.yaml"
    values.write_text(values.read_text().replace("/zerolens-model\n", "/zerolens-model-old\n", 1))
    done = run_step(job, "Package (version and appVersion from the tag)", env, tmp_path)
    assert done.returncode == 0, done.stderr
    done = run_step(job, name, env | {k: evaluate(v, context) for k, v in check["env"].items()}, tmp_path)
    assert done.returncode != 0 and "zerolens-model-old" in done.stdout


# --- the chart's image references -------------------------------------------------------------------------


def images(*args: str, values: str | None = None) -> dict[str, str]:
    return {
        kind: spec["containers"][0]["image"]
        for kind, spec in pod_specs(render(*args, values=values))
        if kind.startswith("Deployment/")
    }


def test_local_builds_and_mirrors_override_the_published_images() -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert images() == {
        "Deployment/zerolens-web": f"ghcr.io/zerolens/zerolens-web:{app_version}",
        "Deployment/zerolens-model": f"ghcr.io/zerolens/zerolens-model:{app_version}-cpu",
    }
    # The kind values: the local images `make images` builds, by their local names.
    assert images(values="cpu-kind.yaml") == {
        "Deployment/zerolens-web": "zerolens/web:dev",
        "Deployment/zerolens-model": "zerolens/model:dev-cpu",
    }
    # A repository that starts with a registry host is a whole name; a registry may carry a path (a mirror).
    for repository in (
        "registry.example.com:5000/team/web",
        "localhost/zerolens/web",
        "mirror.example.com/w",
    ):
        assert images("--set", f"web.image.repository={repository}")["Deployment/zerolens-web"] == (
            f"{repository}:{app_version}"
        )
    mirrored = images("--set", "web.image.registry=mirror.example.com/ghcr", "--set", "web.image.tag=1.0.0")
    assert mirrored["Deployment/zerolens-web"] == "mirror.example.com/ghcr/zerolens/zerolens-web:1.0.0"


def test_a_registry_with_a_scheme_is_refused() -> None:
    assert "web.image.registry" in helm_template_error("--set", "web.image.registry=https://ghcr.io")


def test_readme_installs_and_verifies_what_the_release_publishes() -> None:
    readme = (ROOT / "README.md").read_text()
    owner = load(RELEASE)["env"]["CHART_OWNER"]
    assert f"oci://ghcr.io/{owner}/charts/zerolens" in readme
    assert f"--certificate-oidc-issuer {OIDC_ISSUER}" in readme
    identity = re.search(r"^IDENTITY='([^']+)'$", readme, re.M)
    assert identity, "README: the IDENTITY regexp for cosign verify"
    workflow_ref = release_context(load(RELEASE))["github.workflow_ref"]
    assert re.match(identity[1], f"https://github.com/{workflow_ref}")
    assert not re.match(
        identity[1], f"https://github.com/{owner}/zerolens/.github/workflows/ci.yaml@refs/heads/main"
    )
