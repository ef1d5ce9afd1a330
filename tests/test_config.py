"""cordon.yaml checked against its schema: a misspelt key is refused with file, line and key,
never ignored (``protected_principal:`` once silently emptied the protected list)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cordon.config import ConfigError, load_config
from tests.helpers import link_shipped_rules

REPO = Path(__file__).resolve().parents[1]
CORDON = str(Path(sys.executable).with_name("cordon"))
SHIPPED = (REPO / "cordon" / "defaults" / "cordon.yaml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "cfg"
    d.mkdir(exist_ok=True)
    (d / "cordon.yaml").write_text(text)
    link_shipped_rules(d / "rules")
    (d / "playbooks").symlink_to(REPO / "cordon" / "defaults" / "playbooks")
    return d


def test_the_shipped_configuration_is_valid():
    config = load_config(REPO / "cordon" / "defaults")
    assert "arn:aws:iam::*:root" in config.protected_principals and config.slack_channel


@pytest.mark.parametrize("typo, line, message", [
    ("protected_principals:", "protected_principal:", "field 'protected_principal': unknown key "
                                                       "(did you mean 'protected_principals'?)"),
    ("  channel:", "  chanel:", "field 'slack.chanel': unknown key (did you mean 'slack.channel'?)"),
    ("  quorum:", "  quorums:", "field 'approval.quorums': unknown key (did you mean 'approval.quorum'?)"),
    ("    users: []", "    user: []", "field 'approval.approvers.user': unknown key "
     "(did you mean 'approval.approvers.users'?)"),
])
def test_a_misspelt_key_is_refused_naming_file_line_and_key(tmp_path, typo, line, message):
    assert typo in SHIPPED
    text = SHIPPED.replace(typo, line, 1)
    d = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(d)
    lineno = next(i for i, x in enumerate(text.splitlines(), 1) if x.startswith(line))
    assert f"{d / 'cordon.yaml'}:{lineno}: {message}" in str(err.value)


def test_wrong_types_name_the_deepest_key_and_every_problem_is_listed(tmp_path):
    data = yaml.safe_load(SHIPPED)
    data["approval"]["quorum"] = {"default": "one"}
    data["protected_principals"] = "arn:aws:iam::*:root"
    data["colour"] = "red"
    d = write(tmp_path, yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load_config(d)
    lines = str(err.value).splitlines()
    assert len(lines) == 3, lines
    assert any("field 'protected_principals': input should be a valid list" in x for x in lines)
    assert any("field 'approval.quorum.default': input should be a valid integer" in x for x in lines)
    assert not any(x.endswith("'approval.quorum': input should be a valid integer") for x in lines)
    assert any("field 'colour': unknown key" in x for x in lines)


def cli(*args: str, config: Path, extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CORDON_CONFIG": str(config), "CORDON_DATABASE_URL": f"sqlite:///{config}/l.db",
           **(extra or {})}
    return subprocess.run([CORDON, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_config_validate_and_the_long_running_parts_refuse_a_bad_file(tmp_path):
    good = cli("config", "validate", config=REPO / "cordon" / "defaults")
    assert good.returncode == 0, good.stderr
    assert "28 playbook(s) valid" not in good.stderr and "playbook(s) valid" in good.stdout
    text = SHIPPED.replace("protected_principals:", "protected_principal:", 1).replace(
        "playbooks: ../playbooks", f"playbooks: {REPO / 'playbooks'}")
    d = write(tmp_path, text)
    for args, extra in ((["config", "validate"], None), (["playbooks", "validate"], None),
                        (["serve", "--port", "1"], {"CORDON_SLACK_SIGNING_SECRET": "s"}), (["worker"], None),
                        (["respond", str(REPO / "examples" / "cloudtrail-create-access-key.json"), "--sandbox",
                          "--approve", "auto"], None)):
        res = cli(*args, config=d, extra=extra)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr, (args, res.stderr)
        assert "field 'protected_principal': unknown key" in res.stderr, (args, res.stderr)
        assert f"{d / 'cordon.yaml'}:" in res.stderr
