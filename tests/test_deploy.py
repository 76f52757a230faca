"""The container files, checked as far as a machine without a container engine allows: the
image's entrypoint command and the compose file's environment, run here in the test venv
against a local Redis (with a key prefix of this run) and the compose file's demo upstream,
make a fleet of two that is ready, proxies, and enforces one limit together."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.support.gateways import GatewayProcess
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.waiting import block_until

DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}")


def instruction(name: str) -> str:
    """The last Dockerfile instruction `name`, continuation lines joined."""
    joined = DOCKERFILE.replace("\\\n", " ")
    found = re.findall(rf"^{name}\s+(.*)$", joined, flags=re.MULTILINE)
    assert found, f"Dockerfile has no {name}"
    return found[-1].strip()


def exec_form(text: str) -> list[str]:
    return json.loads(text)


def dotenv(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} from .env."""
    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if variables.get(name):
            return variables[name]
        assert operator != ":?", f"compose needs {name}: {argument}"
        return argument if operator == ":-" else ""

    return _INTERPOLATION.sub(one, value)


def local_command(command: list[str], ports: dict[str, int], volumes: list[str]) -> list[str]:
    """A container's command for this machine: the venv's programs, the mounted files at their
    sources, each listen address on a free loopback port."""
    mounts = {target: source for source, target, *_ in (volume.split(":") for volume in volumes)}
    result = []
    for word in command:
        if word in ("fairgate", "python"):
            word = str(Path(sys.executable).parent / word)
        word = str(ROOT / mounts[word]) if word in mounts else word
        container_port = word.rpartition(":")[2]
        if re.fullmatch(r"0\.0\.0\.0:\d+", word) and container_port in ports:
            word = f"127.0.0.1:{ports[container_port]}"
        result.append(word)
    return result


def healthy(test: list[str], port: int, container_port: int) -> bool:
    """Run a healthcheck command (with the container's port mapped to `port`)."""
    command = [str(Path(sys.executable).parent / "python") if word == "python" else
               word.replace(f":{container_port}/", f":{port}/") for word in test]
    return subprocess.run(command, capture_output=True, timeout=10).returncode == 0


def wait_healthy(test: list[str], port: int, container_port: int, process: subprocess.Popen) -> None:
    def up() -> bool:
        assert process.poll() is None, "the process exited"
        return healthy(test, port, container_port)

    block_until(up, 20, "never healthy", interval=0.1)


class EntrypointProcess(GatewayProcess):
    def __init__(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_image_runs_unprivileged_with_a_healthcheck_a_data_dir_and_pinned_dependencies():
    assert instruction("USER") not in ("root", "0")
    assert set(instruction("EXPOSE").split()) == {"8080", "8081"}
    assert "/readyz" in instruction("HEALTHCHECK")
    assert instruction("WORKDIR") == instruction("VOLUME") == "/var/lib/fairgate"  # where var/audit.jsonl goes
    assert "--constraint constraints.txt" in instruction("RUN")
    pinned = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and line[0] != "#"]
    assert pinned and all("==" in line for line in pinned)
    assert {"aiohttp", "aiolimiter", "redis"} <= {line.split("==")[0].lower() for line in pinned}
    fairgate = COMPOSE["services"]["fairgate"]
    assert fairgate["deploy"]["replicas"] == 2
    assert {"redis", "demo"} <= set(fairgate["depends_on"])


def test_the_compose_fleet_of_two_is_ready_proxies_and_shares_one_limit(tmp_path, redis_url, key_prefix):
    from gateway.auth.dev_tokens import mint_token
    from gateway.config import load_config

    services = COMPOSE["services"]
    variables = dotenv(ROOT / ".env.example")
    demo_port = free_port()
    demo_service = services["demo"]
    demo = subprocess.Popen(local_command([*demo_service["entrypoint"], *demo_service["command"]],
                                          {"9000": demo_port}, []),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    replicas: list[EntrypointProcess] = []
    try:
        wait_healthy(demo_service["healthcheck"]["test"][1:], demo_port, 9000, demo)
        service = services["fairgate"]
        env = {name: interpolate(str(value), variables) for name, value in service["environment"].items()}
        assert env["FAIRGATE_STATE"].startswith("redis://") and env["FAIRGATE_UPSTREAM_URL"].startswith("http://")
        # What the compose network would provide, on this machine:
        env.update(FAIRGATE_STATE=redis_url, FAIRGATE_KEY_PREFIX=f"{key_prefix}:compose",
                   FAIRGATE_UPSTREAM_URL=f"http://127.0.0.1:{demo_port}",
                   PATH=os.environ["PATH"], HOME=str(tmp_path))
        # A clock the test runs under (libfaketime, to check the suite a year ahead) is the gateways' too.
        env.update({name: os.environ[name] for name in ("LD_PRELOAD", "FAKETIME") if name in os.environ})
        command = [*exec_form(instruction("ENTRYPOINT")), *exec_form(instruction("CMD"))]
        admin_ports = []
        for n in range(service["deploy"]["replicas"]):
            ports = {"8080": free_port(), "8081": free_port()}
            data_dir = tmp_path / f"replica-{n}"
            data_dir.mkdir()
            replicas.append(EntrypointProcess(local_command(command, ports, service["volumes"]), env, data_dir))
            admin_ports.append(ports)
        healthcheck = exec_form(instruction("HEALTHCHECK").partition("CMD")[2].strip())
        for replica, ports in zip(replicas, admin_ports, strict=True):
            replica.wait_ready(f"http://127.0.0.1:{ports['8081']}")
            assert healthy(healthcheck, ports["8081"], 8081)  # the image's own HEALTHCHECK passes

        config = load_config(ROOT / "config" / "gateway.yaml", environ=env)
        token = mint_token(config.auth.issuers[0], customer="globex", user="bob@globex.example", ttl=600)
        urls = [f"http://127.0.0.1:{ports['8080']}/api/v1/tickets/1" for ports in admin_ports]
        for url in urls:
            status, body = get(url, token)
            assert status == 200 and json.loads(body)["id"] == 1  # proxied to the demo API
        # globex's plan allows a burst of 10 from the fleet together: nine more on each gateway
        # find the shared bucket empty on both (alone, each would have allowed its ten).
        answers = {url: [get(url, token)[0] for _ in range(9)] for url in urls}
        for url in urls:
            assert 429 in answers[url], answers
    finally:
        for replica in replicas:
            replica.stop()
        demo.kill()
        demo.wait()
