"""The worker image's Dockerfile: multi-stage, pinned, non-root, healthy; and the wheels it installs run.

No Docker engine runs here, so the image itself is not built; its build stage's
wheel is, and a clean virtualenv with only that wheel runs the workers' CLI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def runtime_stage() -> list[tuple[str, str]]:
    ops = instructions()
    last_from = max(i for i, (op, _) in enumerate(ops) if op == "FROM")
    return ops[last_from:]


def test_the_base_is_pinned_and_the_build_is_multi_stage() -> None:
    ops = instructions()
    (base,) = [rest for op, rest in ops if op == "ARG" and rest.startswith("PYTHON=")]
    assert re.fullmatch(r"PYTHON=python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base)
    froms = [rest for op, rest in ops if op == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")


def test_the_runtime_stage_runs_as_non_root_with_only_what_runs() -> None:
    stage = runtime_stage()
    users = [rest for op, rest in stage if op == "USER"]
    assert users and not users[-1].startswith(("root", "0"))
    copies = [rest for op, rest in stage if op in {"COPY", "ADD"}]
    assert copies == [], "sources stay in the build stage"
    run = " ".join(rest for op, rest in stage if op == "RUN")
    assert "pip uninstall -y pip" in run
    assert ("VOLUME", '["/var/lib/costtrace"]') in stage
    assert dict(stage)["ENV"].count("COSTTRACE_STATE_DIR=/var/lib/costtrace/") == 1


def test_the_healthcheck_asks_the_workers_liveness_endpoint() -> None:
    (check,) = [rest for op, rest in runtime_stage() if op == "HEALTHCHECK"]
    assert "/livez" in check and "COSTTRACE_HTTP_PORT" in check


def test_the_wheel_holds_the_migrations_and_schemas_and_runs_alone(tmp_path: Path) -> None:
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
    ]
    # what the build stage copies, built outside the checkout (setuptools writes build/ beside it)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("costtrace", "native"):
        ignore = shutil.ignore_patterns("__pycache__", "target", "_native*.so")
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    # cargo's build folder is shared with the checkout's, so the native model compiles once
    env = {**os.environ, "CARGO_TARGET_DIR": str(REPO / "native" / "target")}
    subprocess.run([*build, str(src)], check=True, timeout=600, env=env)
    (wheel,) = tmp_path.glob("costtrace-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(re.fullmatch(r"costtrace/storage/migrations/versions/0001_\w+\.py", n) for n in names)
    assert "costtrace/storage/migrations/env.py" in names
    assert "costtrace/api/page.html" in names  # finance's web page, served by `costtrace api`
    assert any(n.startswith("costtrace/contract/v1/") and n.endswith(".schema.json") for n in names)
    assert not any(n.startswith(("tests/", "bench/", "deploy/", "native/")) for n in names)
    assert any(re.fullmatch(r"costtrace/_native\.abi3\.so", n) for n in names), "the native model"
    # the image runs only what the wheel and its dependencies hold: the CLI starts from it
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    zipfile.ZipFile(wheel).extractall(site)
    deps = (
        Path(sys.prefix)
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / "site-packages"
    )
    (site / "deps.pth").write_text(str(deps) + "\n")  # the dependencies, not the repository
    code = "import costtrace.cli, costtrace.model.allocation, costtrace.contract.topics; "
    code += "import costtrace.fleet.app; "
    code += "import costtrace.fleet.sink; "
    code += "import costtrace.storage.db as d; print(d.MIGRATIONS)"
    out = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.stdout.strip().startswith(str(site))


def test_what_the_image_installs_is_pinned_and_its_pipes_fail() -> None:
    ops = instructions()
    build = ops[: max(i for i, (op, _) in enumerate(ops) if op == "FROM")]
    assert ("SHELL", '["/bin/bash", "-o", "pipefail", "-c"]') in build  # `curl | sh` fails with curl
    wheels = [rest for op, rest in build if op == "RUN" and "pip wheel" in rest]
    assert wheels and all("--constraint constraints.txt" in rest for rest in wheels)
    assert any(op == "COPY" and "constraints.txt" in rest for op, rest in build)
    pins = dict(
        line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )  # fmt: skip
    pyproject = (REPO / "pyproject.toml").read_text()
    for package in (
        "faust-streaming",
        "mode-streaming",
        "aiokafka",
    ):  # what costtrace/fleet/internals.py reaches into
        assert f'"{package}=={pins[package]}"' in pyproject, package
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {"native/target", ".venv", ".stack", "tests"} <= set(ignored)
