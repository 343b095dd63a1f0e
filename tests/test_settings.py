"""Settings: lookup order, validation messages, environment overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codepool.core.errors import ConfigError
from codepool.core.origins import Origins, is_label, label_of, user_of_label
from codepool.core.settings import EMBEDDED, load_settings, settings_from_mapping


def test_embedded_default_needs_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, {})
    assert s.source == EMBEDDED
    assert s.pool.backend == "local" and s.store_url.startswith("sqlite:///")
    assert s.pool.idle_timeout_s == 300 and s.pool.on_idle == "stop"
    assert s.local.command[0] == "code-server" and "--auth" in s.local.command


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "codepool.toml").write_text("[pool]\nwarm_spares = 2\n")
    env_file = tmp_path / "env.toml"
    env_file.write_text("[pool]\nwarm_spares = 3\n")
    flag_file = tmp_path / "flag.toml"
    flag_file.write_text("[pool]\nwarm_spares = 4\n")
    assert load_settings(None, {}).pool.warm_spares == 2
    assert load_settings(None, {"CODEPOOL_CONFIG": str(env_file)}).pool.warm_spares == 3
    s = load_settings(str(flag_file), {"CODEPOOL_CONFIG": str(env_file)})
    assert s.pool.warm_spares == 4 and s.source == str(flag_file)


def test_environment_overrides_every_type(tmp_path: Path) -> None:
    s = settings_from_mapping(
        {"pool": {"warm_spares": 2}},
        environ={
            "CODEPOOL_POOL_WARM_SPARES": "5",
            "CODEPOOL_STORE_URL": "redis://localhost:6379/1",
            "CODEPOOL_LOCAL_COMMAND": "python -m x --port {port}",
            "CODEPOOL_CONFIG": "ignored here",
            "CODEPOOL_TEST_REDIS_URL": "not a setting",
            "HOME": "/root",
        },
    )
    assert s.pool.warm_spares == 5
    assert s.store_url == "redis://localhost:6379/1"
    assert s.local.command == ("python", "-m", "x", "--port", "{port}")
    on = settings_from_mapping({}, environ={"CODEPOOL_ROUTER_ADMINS_ENTER_WORKSPACES": "yes"})
    assert on.router.admins_enter_workspaces is True
    assert on.public_url == "http://127.0.0.1:8000"
    priced = settings_from_mapping(
        {"cost": {"running_hour_price": 1}},
        environ={"CODEPOOL_COST_STORAGE_GB_MONTH_PRICE": "0.08"},
    )
    assert priced.cost.running_hour_price == 1.0 and isinstance(
        priced.cost.running_hour_price, float
    )
    assert priced.cost.storage_gb_month_price == 0.08


@pytest.mark.parametrize(
    ("data", "env", "message"),
    [
        ({"pool": {"idle_timeout_s": 0}}, {}, "f.toml: pool.idle_timeout_s = 0: must be >= 1"),
        ({"pool": {"idle_timeout_s": "5m"}}, {}, "pool.idle_timeout_s = '5m': must be a whole"),
        ({"pool": {"idle_timeout_s": True}}, {}, "must be a whole number"),
        ({"pool": {"on_idle": "nuke"}}, {}, "pool.on_idle = 'nuke': allowed: stop, terminate"),
        ({"pool": {"backend": "k8s"}}, {}, "pool.backend = 'k8s': allowed: local"),
        ({"pool": {"warm_spares": 5000}}, {}, "must be from 0 to 1000"),
        ({"pool": {"idle": 1}}, {}, "unknown key pool.idle; allowed: assign_timeout_s"),
        ({"poool": {}}, {}, "unknown section [poool]"),
        ({"pool": 3}, {}, "pool must be a table"),
        ({"local": {"command": []}}, {}, "must be a non-empty list of strings"),
        ({"local": {"min_size": 5, "max_size": 2}}, {}, "local.min_size = 5: must be <= local"),
        ({}, {"CODEPOOL_POOL_WARM_SPARES": "many"}, "CODEPOOL_POOL_WARM_SPARES = 'many'"),
        ({}, {"CODEPOOL_POOL_SPARES": "1"}, "CODEPOOL_POOL_SPARES: unknown key pool.spares"),
        ({}, {"CODEPOOL_POOL_ON_IDLE": "x"}, "environment CODEPOOL_POOL_ON_IDLE: pool.on_idle"),
        ({"router": {"admins_enter_workspaces": 1}}, {}, "must be true or false"),
        ({}, {"CODEPOOL_ROUTER_ADMINS_ENTER_WORKSPACES": "maybe"}, "must be true or false"),
        ({"router": {"port": 70000}}, {}, "router.port = 70000: must be from 1 to 65535"),
        (
            {"router": {"origin_mode": "path", "admins_enter_workspaces": True}},
            {},
            "admins_enter_workspaces needs router.origin_mode = 'host'",
        ),
        ({"router": {"origin_mode": "both"}}, {}, "allowed: host, path"),
        ({"local": {"isolation": "chroot"}}, {}, "allowed: auto, accounts, sandbox, none"),
        ({"cost": {"running_hour_price": -1}}, {}, "cost.running_hour_price = -1: must be >= 0"),
        ({"cost": {"running_hour_price": "0.1"}}, {}, "= '0.1': must be a number"),
        ({"cost": {"running_hour_price": False}}, {}, "must be a number"),
        ({"cost": {"running_hour_price": float("inf")}}, {}, "must be a finite number"),
        ({}, {"CODEPOOL_COST_STORAGE_GB_MONTH_PRICE": "cheap"}, "= 'cheap': must be a number"),
        ({}, {"CODEPOOL_COST_STORAGE_GB_MONTH_PRICE": "nan"}, "must be a finite number"),
    ],
)
def test_bad_values_name_where_what_and_what_is_allowed(
    data: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(data, "f.toml", env)
    assert message in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[pool\n")
    with pytest.raises(ConfigError, match=r"broken.toml: not valid TOML"):
        load_settings(str(broken), {})
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(str(tmp_path / "nope.toml"), {})
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(None, {"CODEPOOL_CONFIG": str(tmp_path / "nope.toml")})


@pytest.mark.parametrize(
    ("router", "message"),
    [
        ({"public_url": "https://code.example.com"}, "needs router.workspace_domain"),
        (
            {"public_url": "https://code.example.com", "workspace_domain": "bad_name"},
            "router.workspace_domain = 'bad_name': a DNS name",
        ),
        (
            {"public_url": "https://code.example.com", "workspace_domain": "example.com"},
            "the router's own host code.example.com would be a workspace host",
        ),
    ],
)
def test_per_user_origins_need_a_domain_of_their_own(
    router: dict[str, object], message: str
) -> None:
    settings = settings_from_mapping({"router": router})
    with pytest.raises(ConfigError, match=message):
        Origins.from_settings(settings)


def test_workspace_origins_and_labels() -> None:
    local = Origins.from_settings(settings_from_mapping({}))
    assert local.main == "http://127.0.0.1:8000"
    assert local.workspace("alice") == "http://alice.localhost:8000"
    public = Origins.from_settings(
        settings_from_mapping(
            {"router": {"public_url": "https://code.example.com", "workspace_domain": "ws.x.io"}}
        )
    )
    assert public.workspace("alice") == "https://alice.ws.x.io"
    assert public.label_in("alice.ws.x.io") == "alice" == public.label_in("ALICE.ws.x.io:443")
    assert public.label_in("alice.ws.x.io:8443") is None
    assert public.label_in("a.b.ws.x.io") is None and public.label_in("ws.x.io") is None
    # Names that are not DNS labels get one made from their hash; the two kinds never meet.
    odd = label_of("jane.doe@example.com")
    assert odd.startswith("u--") and len(odd) == 29 and is_label(odd)
    assert user_of_label(odd) is None and user_of_label("alice") == "alice"
    assert label_of("a--b") != "a--b" and label_of("x" * 64) != "x" * 64
    path = Origins.from_settings(settings_from_mapping({"router": {"origin_mode": "path"}}))
    assert path.workspace_url("alice") == "/w/alice/" and path.label_in("alice.localhost") is None


def test_config_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config, $CODEPOOL_CONFIG, ./codepool.toml, $XDG_CONFIG_HOME/codepool/config.toml,
    then the system's; `codepool config path` says which is in use."""
    from typer.testing import CliRunner

    from codepool.cli.app import app
    from codepool.core.settings import find_config

    monkeypatch.chdir(tmp_path)
    xdg = tmp_path / "xdg"
    env = {"XDG_CONFIG_HOME": str(xdg)}
    mine = xdg / "codepool" / "config.toml"
    mine.parent.mkdir(parents=True)
    mine.write_text("")
    assert find_config(None, env) == mine
    (tmp_path / "codepool.toml").write_text("")
    assert find_config(None, env) == Path("codepool.toml")
    named = tmp_path / "named.toml"
    named.write_text("")
    assert find_config(None, {**env, "CODEPOOL_CONFIG": str(named)}) == named
    assert find_config(str(mine), {**env, "CODEPOOL_CONFIG": str(named)}) == mine

    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.delenv("CODEPOOL_CONFIG", raising=False)
    result = CliRunner().invoke(app, ["config", "path"])
    assert result.exit_code == 0 and result.output == f"{tmp_path / 'codepool.toml'}\n"
    (tmp_path / "codepool.toml").unlink()
    result = CliRunner().invoke(app, ["config", "path", "--json"])
    assert json.loads(result.output) == {
        "path": str(mine),
        "searched": ["codepool.toml", str(mine), "/etc/codepool/config.toml"],
    }
