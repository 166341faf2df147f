"""The Dockerfile is coherent: non-root final stage, real entry points, copied paths in the context.

No engine builds it here, so a small instruction parser reads it (continuations, comments, exec
form) and the checks are about what the build would do: which stage is final, which files COPY
takes from the context (and whether .dockerignore drops them), which modules CMD runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pytest
import yaml
from deploy_support import REPO, module_source

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DOCKER_STOP_TIMEOUT_SECONDS = 10  # `docker stop` / `docker run` default before SIGKILL
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|cmake|[\w.+-]+-dev)\b")


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


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(dockerfile) -> Stage:
    return dockerfile.stages[-1]


def context_copies(dockerfile: Dockerfile) -> list[tuple[str, str]]:
    """(stage name, source) for every COPY/ADD that reads the build context."""
    copies = []
    for stage in dockerfile.stages:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            flags, words = instruction.flags_and_paths()
            if "from" not in flags:
                copies.extend((stage.name or stage.base, source) for source in words[:-1])
    return copies


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


def test_final_stage_runs_as_a_fixed_non_root_user(final):
    users = final.all("USER")
    assert users, "the final stage never switches away from root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric uid lets Kubernetes runAsNonRoot verify it"
    created = " ".join(i.args for i in final.all("RUN"))
    assert f"--uid {user}" in created, f"uid {user} is never created in the final stage"
    # nothing runs as root after the switch
    last_user = max(i for i, ins in enumerate(final.instructions) if ins.keyword == "USER")
    assert not [ins for ins in final.instructions[last_user:] if ins.keyword == "RUN"]


def test_variant_build_arg_selects_a_cpu_or_cuda_base(dockerfile, final):
    args = dockerfile.global_args
    assert args["VARIANT"] == "cpu"
    assert final.base == "base-${VARIANT}"
    cpu, cuda = dockerfile.stage("base-cpu"), dockerfile.stage("base-cuda")
    python_image = expand(cpu.base, args)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", python_image)
    cuda_image = expand(cuda.base, args)
    # torch's cu130 wheels and onnxruntime-gpu 1.31 need CUDA 13 and cuDNN 9 at run time
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", cuda_image)
    # the venv is built once, by the same interpreter both runtimes carry
    assert expand(dockerfile.stage("builder").base, args) == python_image
    assert any("--from=builder /usr/local/" in i.args for i in cuda.all("COPY"))


def test_builder_installs_torch_from_the_index_matching_the_variant(dockerfile):
    builder = dockerfile.stage("builder")
    arg_defaults = dict(i.args.partition("=")[::2] for i in builder.all("ARG"))
    assert arg_defaults["TORCH_INDEX_CPU"].endswith("/whl/cpu")
    assert arg_defaults["TORCH_INDEX_CUDA"].endswith("/whl/cu130")
    runs = " ".join(i.args for i in builder.all("RUN"))
    assert 'cpu) torch_index="$TORCH_INDEX_CPU"' in runs
    assert 'cuda) torch_index="$TORCH_INDEX_CUDA"' in runs
    assert "exit 2" in runs  # an unknown VARIANT stops the build with a message
    assert "['project']['dependencies']" in runs  # the pinned list from pyproject.toml


def test_runtime_images_carry_no_build_tools(dockerfile, final):
    for stage in (final, dockerfile.stage("base-cpu"), dockerfile.stage("base-cuda")):
        for run in stage.all("RUN"):
            installs = run.args.split("apt-get install", 1)[1:] or [""]
            packages = installs[0].split("&&")[0]
            assert not BUILD_TOOLS.search(packages), f"build tools installed: {run.args}"
    # from the builder, the runtime takes the virtual environment and nothing else
    froms = [i.flags_and_paths() for i in final.all("COPY")]
    assert [(f["from"], words) for f, words in froms if "from" in f] == [
        ("builder", ["/opt/venv", "/opt/venv"])
    ]


def test_cmd_and_healthcheck_run_modules_of_the_package(final):
    cmd = final.all("CMD")[-1].exec_form()
    assert cmd[:3] == ["python", "-m", "serving"]
    check = final.all("HEALTHCHECK")[-1].exec_form()
    assert check[:3] == ["python", "-m", "serving.healthcheck"]
    for module in (cmd[2], check[2]):
        assert module_source(module) is not None, f"no module {module!r} in the repo"
    # no ENTRYPOINT: `docker run IMAGE python -m training ...` must replace the command whole
    assert not final.all("ENTRYPOINT")


def test_default_command_matches_the_compose_server(final):
    """`docker run IMAGE` and compose's server start the same way (ports, repository, host)."""
    cmd = final.all("CMD")[-1].exec_form()
    server = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["server"]
    compose_cmd = server["command"]
    for name in ("--model-repository", "--host", "--grpc-port", "--metrics-port"):
        assert cmd[cmd.index(name) + 1] == compose_cmd[compose_cmd.index(name) + 1], name
    exposed = {int(port) for i in final.all("EXPOSE") for port in i.args.split()}
    ports = {int(cmd[cmd.index(name) + 1]) for name in ("--grpc-port", "--metrics-port")}
    assert exposed == ports
    # `docker stop` sends SIGKILL after 10 s: the drain (plus closing the models) fits before it
    assert float(cmd[cmd.index("--grace-seconds") + 1]) + 1 < DOCKER_STOP_TIMEOUT_SECONDS
    workdir = PurePosixPath(final.all("WORKDIR")[-1].args)
    assert PurePosixPath(cmd[cmd.index("--model-repository") + 1]).parent == workdir


def test_every_copied_path_exists_and_survives_dockerignore(dockerfile):
    patterns = dockerignore_patterns()
    copies = context_copies(dockerfile)
    assert copies
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    for stage, source in copies:
        path = source.rstrip("/")
        assert (REPO / path).exists(), f"{stage}: COPY {source} does not exist"
        assert not is_ignored(path, patterns), f"{stage}: COPY {source} is in .dockerignore"
        inside = [f for f in tracked if f == path or f.startswith(path + "/")]
        dropped = [f for f in inside if f.endswith(".py") and is_ignored(f, patterns)]
        assert not dropped, f"{stage}: .dockerignore drops {dropped[:5]}"


def test_image_gets_every_package_and_file_pyproject_needs(dockerfile):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    copied = {source.rstrip("/") for _, source in context_copies(dockerfile)}
    assert "pyproject.toml" in copied
    assert pyproject["project"]["readme"] in copied  # setuptools reads it while building
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        path.parent.name
        for path in REPO.glob("*/__init__.py")
        if any(re.fullmatch(p.replace("*", ".*"), path.parent.name) for p in include)
    }
    assert packages and packages <= copied, f"not copied: {sorted(packages - copied)}"


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
    for path in ("pyproject.toml", "README.md", "serving/healthcheck.py", "training/data.py"):
        assert not is_ignored(path, patterns), path
