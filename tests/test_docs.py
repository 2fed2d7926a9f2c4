"""The public surface is documented: every CLI command and option has help, every query
route is in README.md, and README's two newcomer commands name things that exist."""

from pathlib import Path

import click

from fustor.cli import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def walk(cmd: click.Command, prefix: str):
    yield prefix, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from walk(sub, f"{prefix} {name}")


def test_every_command_and_option_explains_itself():
    missing = []
    for name, cmd in walk(main, "fustor"):
        if not (cmd.help or "").strip():
            missing.append(name)
        for p in cmd.params:
            if isinstance(p, click.Option) and not (p.help or "").strip() and p.name != "help":
                missing.append(f"{name} {p.opts[0]}")
    assert missing == []


def test_every_query_and_management_route_is_in_the_readme(tmp_path):
    from fustor.config import default_config
    from fustor.fusion.app import create_app
    from fustor.fusion.core import Fusion

    f = Fusion(default_config(tmp_path), tmp_path)
    app = create_app(f)
    routes = {r.path.rsplit("/", 1)[-1] for r in app.routes
              if getattr(r, "path", "").startswith(("/api/v1/views/", "/api/v1/management/"))}
    undocumented = sorted(r for r in routes if r not in README and not r.startswith("{"))
    assert undocumented == []


def test_readme_commands_name_real_commands():
    for phrase in ("fustor fusion serve", "--watch", "fustor agent start", "fustor inspect",
                   "fustor migrate", "python -m pytest -q"):
        assert phrase in README
    names = {n for n, _ in walk(main, "fustor")}
    for n in ("fustor fusion serve", "fustor agent start", "fustor inspect", "fustor migrate"):
        assert n in names


def test_the_web_page_and_its_routes_are_in_the_readme():
    for phrase in ("/ui", "GET /api/v1/me", "/docs"):
        assert phrase in README
