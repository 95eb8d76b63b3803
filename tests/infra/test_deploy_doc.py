"""docs/deploy.md: the commands that can run here are run; the others are parsed.

- Blocks whose first line is `# checked` run in order with bash (schema checks, rendering the
  configs, loading and building the Serve config) and must succeed.
- Every other command line is parsed by the program it calls, without running it: `ray …` and
  `serve …` by Ray's own click CLIs, `seem …` (also inside `ray job submit -- seem …`) by the
  seem parser, `python infra/….py` by the script's parser. A misspelt option fails here.
- Every repository path the document names exists (out/deploy/* after rendering).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

import check
import configure

from .conftest import REPO

DOC = REPO / "docs" / "deploy.md"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def is_checked(block: str) -> bool:
    return block.lstrip().startswith("# checked")


def command_lines(block: str) -> list[list[str]]:
    """Each line's commands (split at |, &&, ;) as tokens; comments and env settings dropped."""
    out = []
    for line in block.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens = shlex.split(line, comments=True)
        segment: list[str] = []
        for t in tokens + ["|"]:
            if t in {"|", "&&", ";", "||"}:
                if segment and segment[0] not in {"export", "."} and "=" not in segment[0]:
                    out.append(segment)
                segment = []
            else:
                segment.append(t)
    return out


def parse_click(group: click.Group, argv: list[str]) -> tuple[str, dict]:
    """Parse argv with a click group down to the leaf command, without invoking it."""
    ctx = group.make_context(group.name or "cli", list(argv))
    cmd: click.Command = group
    args = [*getattr(ctx, "_protected_args", []), *ctx.args]
    while isinstance(cmd, click.Group):
        name, sub, rest = cmd.resolve_command(ctx, args)
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub
        args = [*getattr(ctx, "_protected_args", []), *ctx.args]
    return cmd.name, ctx.params


def test_document_has_checked_blocks():
    blocks = bash_blocks(DOC.read_text())
    checked = [b for b in blocks if is_checked(b)]
    assert len(checked) >= 3 and len(blocks) > len(checked)
    assert any("infra/check.py" in b for b in checked)
    assert any("infra/configure.py" in b for b in checked)


@pytest.mark.timeout(900)
def test_checked_blocks_run():
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for block in (b for b in bash_blocks(DOC.read_text()) if is_checked(b)):
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, (f"block failed:\n{block}\n--- stdout\n{proc.stdout[-4000:]}"
                                      f"\n--- stderr\n{proc.stderr[-4000:]}")


def test_every_other_command_parses():
    from ray.scripts.scripts import cli as ray_cli
    from ray.serve.scripts import cli as serve_cli

    parsers = {"infra/check.py": check.build_parser(), "infra/configure.py": configure.build_parser()}
    seen = set()
    for block in bash_blocks(DOC.read_text()):
        for tokens in command_lines(block):
            program = tokens[0]
            seen.add(program)
            try:
                if program == "ray":
                    name, params = parse_click(ray_cli, tokens[1:])
                    entry = params.get("entrypoint")
                    if name == "submit" and entry and entry[0] == "seem":
                        problem = check.check_seem_command(shlex.join(entry))
                        assert problem is None, f"{shlex.join(tokens)}: {problem}"
                elif program == "serve":
                    parse_click(serve_cli, tokens[1:])
                elif program == "seem":
                    problem = check.check_seem_command(shlex.join(tokens))
                    assert problem is None, f"{shlex.join(tokens)}: {problem}"
                elif program == "python" and tokens[1] in parsers:
                    parsers[tokens[1]].parse_args(tokens[2:])
            except click.UsageError as e:
                pytest.fail(f"{shlex.join(tokens)}: {e}")
    assert {"ray", "serve", "python", "kubectl", "aws", "docker", "helm"} <= seen


def test_a_misspelt_ray_option_would_fail():
    from ray.scripts.scripts import cli as ray_cli

    with pytest.raises(click.UsageError):
        parse_click(ray_cli, ["job", "logs", "--adress", "http://127.0.0.1:8265", "x"])
    name, params = parse_click(ray_cli, ["dashboard", "c.yaml", "--port", "8000", "--remote-port", "8000"])
    assert (name, params["remote_port"]) == ("dashboard", 8000)


def test_named_paths_exist():
    text = DOC.read_text()
    rendered = set(configure.SOURCES)
    paths = set(re.findall(r"(?<![\w/.-])((?:infra|docs|tests|bench)/[\w./-]+\.\w+|ray_cluster\.yaml)", text))
    assert "infra/Dockerfile" in text and paths
    for p in sorted(paths):
        assert (REPO / p).exists(), f"docs/deploy.md names {p}, which does not exist"
    for name in set(re.findall(r"out/deploy/([\w.-]+)", text)):
        assert name in rendered, f"docs/deploy.md uses out/deploy/{name}, which configure.py does not render"
