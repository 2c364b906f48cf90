"""The Docker deployment checked without a Docker engine.

docker-compose.yml and docker/compose.gpu.yml are read as YAML with every ``${VAR:-default}`` at its
default; the services' environments are fed to Prefect's own settings model; the Dockerfile's COPY list is
held against pyproject's package discovery and .dockerignore; the image's entry point runs as a plain
process, with stand-ins for ``m6rec`` and ``prefect`` where the real ones would need a server.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
GPU_OVERRIDE = REPO / "docker" / "compose.gpu.yml"
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
SUBSTITUTION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
PREFECT_SETTINGS_ENV = re.compile(r"^PREFECT_")


def _at_defaults(value):
    """Compose interpolation with an empty environment, applied like Compose to the parsed values: every
    ``${VAR:-default}`` becomes its default."""
    if isinstance(value, dict):
        return {key: _at_defaults(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_at_defaults(item) for item in value]
    if isinstance(value, str):
        return SUBSTITUTION.sub(lambda match: match.group(2)[2:], value).replace("$$", "$")
    return value


def _load(path: Path) -> dict:
    return _at_defaults(yaml.safe_load(path.read_text()))


def _merged(base: dict, override: dict) -> dict:
    """Compose's merge of a second file for the mapping keys the override uses: mappings merge, values replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merged(base[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load(COMPOSE)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _environment(service: dict) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _mounts(service: dict) -> dict[str, tuple[str, str]]:
    """Container path → (host source, mode) of a service's short-syntax volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode[0] if mode else "rw")
    return mounts


def _prefect_settings(monkeypatch, environment: dict[str, str]):
    """Prefect's settings as a container with exactly these PREFECT_* variables would see them."""
    from prefect.settings import Settings

    for name in [name for name in os.environ if PREFECT_SETTINGS_ENV.match(name)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PREFECT_HOME", "/nonexistent-m6rec-test-home")
    for name, value in environment.items():
        if PREFECT_SETTINGS_ENV.match(name):
            monkeypatch.setenv(name, value)
    return Settings()


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _dockerfile_args() -> dict[str, str | None]:
    args = {}
    for instruction, rest in _dockerfile_instructions():
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default or None
    return args


def _copy_sources() -> list[str]:
    sources = []
    for instruction, rest in _dockerfile_instructions():
        if instruction == "COPY":
            words = [word for word in rest.split() if not word.startswith("--")]
            sources.extend(words[:-1])
    return sources


def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern:
    regex, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex, index = regex + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            regex, index = regex + ".*", index + 2
        elif pattern[index] == "*":
            regex, index = regex + "[^/]*", index + 1
        elif pattern[index] == "?":
            regex, index = regex + "[^/]", index + 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            regex, index = regex + pattern[index : end + 1], end + 1
        else:
            regex, index = regex + re.escape(pattern[index]), index + 1
    return re.compile(regex + r"\Z")


def _ignored_by_docker(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


@pytest.fixture(scope="module")
def build_context() -> set[str]:
    """The repository files (tracked, or untracked and not git-ignored) that `docker build .` would send."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    patterns = _dockerignore_patterns()
    return {path for path in listed if (REPO / path).is_file() and not _ignored_by_docker(path, patterns)}


@pytest.fixture(scope="module")
def deployments() -> list[dict]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def test_the_stack_has_a_database_a_server_a_worker_and_the_demo_data_job(services):
    assert set(services) == {
        "postgres",
        "prefect-server",
        "worker",
        "demo-data",
        "dask-scheduler",
        "dask-worker",
    }
    assert services["postgres"]["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in services["postgres"]["volumes"])


def test_every_substitution_has_a_default_and_no_dollar_is_left_bare():
    """Every variable has a default, except the API's login, which has none to guess: compose stops with
    the line saying how to set it."""
    for path in (COMPOSE, GPU_OVERRIDE):
        text = path.read_text()
        for match in SUBSTITUTION.finditer(text):
            if match.group(0).startswith("${PREFECT_AUTH_STRING"):
                assert match.group(2).startswith(":?set PREFECT_AUTH_STRING="), match.group(0)
                continue
            assert match.group(2).startswith(":-"), f"{path.name}: {match.group(0)} has no default"
        assert "$" not in SUBSTITUTION.sub("", text).replace("$$", ""), f"{path.name}: a $ without braces"


def test_every_dependency_exists_and_waits_for_a_healthcheck(services):
    for name, service in services.items():
        for target, condition in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on missing service {target}"
            assert condition["condition"] == "service_healthy"
            assert "healthcheck" in services[target], f"{target} has no healthcheck for {name} to wait on"
    assert "postgres" in services["prefect-server"]["depends_on"]
    assert "prefect-server" in services["worker"]["depends_on"]


def test_server_stores_its_state_in_the_postgres_service(services, monkeypatch):
    server, postgres = services["prefect-server"], services["postgres"]
    database = _environment(postgres)
    settings = _prefect_settings(monkeypatch, _environment(server))

    url = urlsplit(settings.server.database.connection_url.get_secret_value())
    assert url.scheme == "postgresql+asyncpg"
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert (url.username, url.password) == (database["POSTGRES_USER"], database["POSTGRES_PASSWORD"])
    assert url.path == f"/{database['POSTGRES_DB']}"
    assert settings.server.analytics_enabled is False


def test_server_listens_where_the_browser_and_the_worker_look(services, monkeypatch):
    server = services["prefect-server"]
    command = server["command"]
    assert command[:3] == ["prefect", "server", "start"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    container_port = command[command.index("--port") + 1]
    bind, host_port, published = server["ports"][0].split(":")
    assert (bind, published) == ("127.0.0.1", container_port)
    assert "/api/health" in " ".join(server["healthcheck"]["test"])

    ui = _prefect_settings(monkeypatch, _environment(server)).server.ui
    assert ui.api_url == f"http://localhost:{host_port}/api"
    worker = _prefect_settings(monkeypatch, _environment(services["worker"]))
    assert worker.api.url == f"http://prefect-server:{container_port}/api"
    assert "m6rec" in worker.logging.extra_loggers


def test_worker_is_built_from_the_repository_dockerfile_and_mounts_data_and_outputs(services):
    worker = services["worker"]
    assert (REPO / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve() == DOCKERFILE
    environment = _environment(worker)
    mounts = _mounts(worker)
    assert mounts[environment["M6REC_DATA_DIR"]] == ("./data", "ro")
    assert mounts[environment["M6REC_OUT_DIR"]] == ("./outputs", "rw")
    assert environment["HF_HUB_OFFLINE"] == "1"
    assert worker["restart"] == "unless-stopped"
    assert worker["command"] == ["worker"]


def test_demo_data_job_writes_into_the_folder_the_worker_reads(services):
    worker, demo = services["worker"], services["demo-data"]
    assert demo["profiles"] == ["demo"]
    assert demo["image"] == worker["image"] and demo["build"] == worker["build"]
    data_dir = _environment(demo)["M6REC_DATA_DIR"]
    assert _mounts(demo)[data_dir] == ("./data", "rw")
    assert _mounts(worker)[_environment(worker)["M6REC_DATA_DIR"]][0] == "./data"
    assert demo["command"] == ["demo-data"]


def test_worker_environment_is_what_the_deployments_read(services, monkeypatch):
    from flows.deployments import CONFIG_ENV, DATA_DIR_ENV, OUT_DIR_ENV, deployment_parameters

    worker = services["worker"]
    environment = _environment(worker)
    for name in (DATA_DIR_ENV, OUT_DIR_ENV, CONFIG_ENV):
        monkeypatch.setenv(name, environment[name])
    parameters = deployment_parameters()
    assert parameters["data_dir"] in _mounts(worker) and parameters["out_dir"] in _mounts(worker)
    assert parameters["config_path"] is None


def test_the_api_asks_for_a_login_checks_csrf_and_admits_only_the_ui_origin(services):
    server, worker = _environment(services["prefect-server"]), _environment(services["worker"])
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == worker["PREFECT_API_AUTH_STRING"]
    required = "${PREFECT_AUTH_STRING:?set PREFECT_AUTH_STRING=user:password in .env}"
    assert COMPOSE.read_text().count(required) == 3, (
        "the server, the worker and the Dask workers share one login"
    )
    assert server["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] == "true"
    assert worker["PREFECT_CLIENT_CSRF_SUPPORT_ENABLED"] == "true"
    assert server["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"] == "http://localhost:4200"


def test_documented_deployment_names_exist():
    from flows.deployments import DEPLOYMENTS, load_flow

    deployed = {f"{load_flow(spec).name}/{spec.name}" for spec in DEPLOYMENTS}
    for path in (COMPOSE, REPO / "docs" / "deploy.md"):
        named = re.findall(r"prefect deployment run (\S+)", path.read_text())
        assert named and set(named) <= deployed, f"{path.name}: {set(named) - deployed} are not deployed"
        assert set(re.findall(r"`([a-z-]+/[a-z-]+)`", path.read_text())) <= deployed


def test_worker_healthcheck_asks_the_port_prefect_serves_it_on(services, monkeypatch):
    port = _prefect_settings(monkeypatch, {}).worker.webserver.port
    assert f"http://localhost:{port}/health" in " ".join(services["worker"]["healthcheck"]["test"])
    assert "--with-healthcheck" in ENTRYPOINT.read_text()


def test_the_dask_profile_has_a_scheduler_the_flows_can_reach_and_two_workers_writing_their_outputs(services):
    from m6rec.cluster import DASK_ADDRESS_VARIABLE, check_dask_address

    scheduler, workers, flows = services["dask-scheduler"], services["dask-worker"], services["worker"]
    assert scheduler["profiles"] == workers["profiles"] == ["dask"]
    assert "profiles" not in flows, "the flows' worker runs with or without the dask profile"
    port = scheduler["command"][scheduler["command"].index("--port") + 1]
    address = f"tcp://dask-scheduler:{port}"
    assert check_dask_address(address) == address
    assert COMPOSE.read_text().count(f"{DASK_ADDRESS_VARIABLE}={address}") == 1, "the header says how"
    assert _environment(flows)[DASK_ADDRESS_VARIABLE] == "", "in-process unless set"
    assert workers["command"][:3] == ["dask", "worker", address]
    assert workers["command"][workers["command"].index("--nthreads") + 1] == "1"
    assert workers["deploy"]["replicas"] == 2
    assert workers["image"] == scheduler["image"] == flows["image"]
    out_dir = _environment(flows)["M6REC_OUT_DIR"]
    assert _mounts(workers)[out_dir] == (_mounts(flows)[out_dir][0], "rw")
    prefect = {key: value for key, value in _environment(flows).items() if key.startswith("PREFECT_")}
    assert prefect and {key: _environment(workers).get(key) for key in prefect} == prefect, (
        "the partitions' Prefect task runs report to the flows' API"
    )
    from importlib.metadata import entry_points

    assert entry_points(group="console_scripts", name="dask"), "the image's dask command (from the lock)"


def test_gpu_reservation_lives_only_in_the_opt_in_override(compose):
    assert "devices" not in COMPOSE.read_text()
    override = _load(GPU_OVERRIDE)
    assert set(override["services"]) <= set(compose["services"]), "the override may only adjust services"

    gpu_worker = _merged(compose["services"]["worker"], override["services"]["worker"])
    devices = gpu_worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert gpu_worker["build"]["context"] == "." and gpu_worker["build"]["dockerfile"] == "Dockerfile"
    assert gpu_worker["build"]["args"]["M6REC_GPU"] == "true"
    assert gpu_worker["image"] != compose["services"]["worker"]["image"], "the CPU image keeps its tag"
    assert (
        gpu_worker["command"] == ["worker"]
        and gpu_worker["volumes"] == compose["services"]["worker"]["volumes"]
    )
    gpu_demo_data = _merged(compose["services"]["demo-data"], override["services"]["demo-data"])
    assert (gpu_demo_data["image"], gpu_demo_data["build"]) == (gpu_worker["image"], gpu_worker["build"])
    assert "deploy" not in gpu_demo_data and gpu_demo_data["profiles"] == ["demo"]


def test_build_args_are_declared_and_prefect_versions_agree_with_the_lock(compose):
    declared = _dockerfile_args()
    override = _load(GPU_OVERRIDE)
    for service in [*compose["services"].values(), *override["services"].values()]:
        for name in service.get("build", {}).get("args", {}):
            assert name in declared, f"build arg {name} is not an ARG of the Dockerfile"

    import prefect

    locked = dict(
        line.split("==", 1) for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line
    )
    assert (
        compose["services"]["prefect-server"]["image"] == f"prefecthq/prefect:{locked['prefect']}-python3.11"
    )
    assert locked["prefect"] == prefect.__version__, "the suite runs with the locked Prefect"
    assert declared["M6REC_GPU"] == "false"
    assert declared["TORCH_INDEX_URL"].endswith("/whl/cpu")


def test_dockerfile_copies_every_package_pyproject_discovers(build_context):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        path.name
        for path in REPO.iterdir()
        if (path / "__init__.py").is_file()
        and any(_pattern_regex(pattern).match(path.name) for pattern in include)
    }
    assert {"m6rec", "features", "ranker", "pipelines", "flows"} <= packages
    sources = _copy_sources()
    assert packages | {"pyproject.toml", pyproject["project"]["readme"], "prefect.yaml"} <= set(sources)

    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        sent = source in build_context or any(path.startswith(f"{source}/") for path in build_context)
        assert sent, f"COPY {source}: .dockerignore keeps it out of the build context"
    package_files = {path for path in build_context if path.split("/")[0] in packages}
    for package in packages:
        for module in (REPO / package).rglob("*.py"):
            assert str(module.relative_to(REPO)) in package_files or "__pycache__" in module.parts


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = _dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "data/interactions.csv",
        "outputs/nightly/recommendations.parquet",
        "demo-out/run/metrics.json",
        "m6rec/__pycache__/cli.cpython-311.pyc",
        "m6rec.egg-info/PKG-INFO",
        ".pytest_cache/README.md",
        "tests/test_compose.py",
    ):
        assert _ignored_by_docker(path, patterns), path
    for path in ("m6rec/cli.py", "flows/nightly.py", "prefect.yaml", "docker/entrypoint.sh", "README.md"):
        assert not _ignored_by_docker(path, patterns), path


def test_entrypoint_is_valid_bash():
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)
    assert any(source == "docker/entrypoint.sh" for source in _copy_sources())


def _stand_in(bin_dir: Path, name: str, log: Path) -> None:
    """An executable that records its name and arguments, one line per call."""
    script = bin_dir / name
    script.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{log}"\n')
    script.chmod(0o755)


def _run_entrypoint(
    tmp_path: Path, *args: str, **environment: str
) -> tuple[subprocess.CompletedProcess, list]:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir(exist_ok=True)
    for name in ("m6rec", "prefect", "python"):
        _stand_in(bin_dir, name, log)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), **environment}
    completed = subprocess.run(["bash", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True)
    return completed, (log.read_text().splitlines() if log.exists() else [])


def test_worker_entrypoint_registers_deployments_then_polls_the_pool(tmp_path, deployments):
    outputs = tmp_path / "outputs"
    completed, calls = _run_entrypoint(
        tmp_path, "worker", M6REC_DATA_DIR=str(tmp_path / "data"), M6REC_OUT_DIR=str(outputs)
    )
    assert completed.returncode == 0, completed.stderr
    assert calls == [
        "m6rec flows deploy",
        "prefect worker start --pool m6rec --type process --with-healthcheck",
    ]
    assert outputs.is_dir()
    assert "holds no interactions file" in completed.stderr
    from flows.deployments import WORK_POOL

    assert {deployment["work_pool"]["name"] for deployment in deployments} == {WORK_POOL} == {"m6rec"}


def test_worker_entrypoint_stops_with_a_hint_when_outputs_cannot_be_written(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    completed, calls = _run_entrypoint(tmp_path, "worker", M6REC_OUT_DIR=str(blocker / "outputs"))
    assert completed.returncode == 2
    assert completed.stderr.startswith(f"error: {blocker / 'outputs'} is not writable")
    assert "hint: create the host folder yourself" in completed.stderr
    assert calls == []


def test_demo_data_keeps_a_dataset_that_is_already_there(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "interactions.csv").write_text("user_id,item_id\nu1,i1\n")
    completed, calls = _run_entrypoint(tmp_path, "demo-data", M6REC_DATA_DIR=str(data))
    assert completed.returncode == 0
    assert completed.stdout == f"kept the dataset already in {data}\n"
    assert calls == [] and sorted(path.name for path in data.iterdir()) == ["interactions.csv"]


def test_demo_data_calls_the_catalogue_generator_with_the_data_folder(tmp_path):
    """The entry point's Python snippet runs against a stand-in generator that records its argument."""
    fake = tmp_path / "fake" / "m6rec"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "demo_catalogue.py").write_text(
        "def generate_demo_catalogue(out_dir):\n"
        "    out_dir.mkdir(parents=True, exist_ok=True)\n"
        "    (out_dir / 'interactions.parquet').write_text('')\n"
        "    return out_dir\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    data = tmp_path / "data"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(fake.parent), "M6REC_DATA_DIR": str(data)}
    completed = subprocess.run(
        ["bash", str(ENTRYPOINT), "demo-data"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == f"demo catalogue (synthetic): {data}\n"
    assert (data / "interactions.parquet").is_file()

    from m6rec.demo_catalogue import generate_demo_catalogue

    parameters = list(inspect.signature(generate_demo_catalogue).parameters.values())
    assert all(parameter.default is not inspect.Parameter.empty for parameter in parameters[1:])


def test_other_commands_run_as_given(tmp_path):
    completed, calls = _run_entrypoint(tmp_path, "m6rec", "run", "/data", "--out", "/outputs/adhoc")
    assert completed.returncode == 0
    assert calls == ["m6rec run /data --out /outputs/adhoc"]


def test_the_commands_the_entrypoint_runs_exist():
    from m6rec.cli import app

    result = CliRunner().invoke(app, ["flows", "deploy", "--help"])
    assert result.exit_code == 0, result.output
    prefect = Path(sys.executable).with_name("prefect")
    help_text = subprocess.run(
        [str(prefect), "worker", "start", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--pool", "--type", "--with-healthcheck"):
        assert option in help_text
