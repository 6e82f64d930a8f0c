"""forsun's own conf files load: every key, the environment-name spelling included."""

from __future__ import annotations

from pathlib import Path

from forsun_box.config import load_config
from tests.forsun_confs import EXAMPLE_LIKE_CONF, TRAVIS_LIKE_CONF


def test_travis_conf_loads_every_key(tmp_path: Path) -> None:
    conf = tmp_path / "travis.conf"
    conf.write_text(
        TRAVIS_LIKE_CONF.format(
            port=7001, log=tmp_path / "f.log", redis_port=6390, prefix="p", cwd=tmp_path
        )
    )
    cfg = load_config([f"--conf={conf}"], {})
    assert (cfg.port, cfg.http_bind, cfg.server_mode, cfg.log_level) == (7001, "", "TIMER", "DEBUG")
    assert (cfg.driver, cfg.store_redis_port, cfg.store_redis_password) == ("redis", 6390, "")
    assert (cfg.retry_max_count, cfg.thrift_max_connections, cfg.extensions) == (3, 64, ())
    assert cfg.log_format == "" and cfg.log_backup_count == 64 and cfg.mem_time_rate == 1.0


def test_conf_example_loads_every_key(tmp_path: Path) -> None:
    conf = tmp_path / "forsun.conf"
    conf.write_text(EXAMPLE_LIKE_CONF.format(log=tmp_path / "f.log", dump=tmp_path / "f.dump"))
    cfg = load_config(["--conf", str(conf)], {})
    assert cfg.driver == "mem" and cfg.mem_path == str(tmp_path / "f.dump")
    assert cfg.extensions == ("a", "b") and cfg.shell_cwd == "/tmp"
