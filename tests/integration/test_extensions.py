"""Extensions loaded by a real server process: the drop-in folder, forsun's flags and
conf file, an extension store chosen with --driver, and broken extensions."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.helpers import Server, wait_until

# Written the way forsun's extension article writes them: forsun's import paths,
# a tornado coroutine, the work handed to a ThreadPoolExecutor.
FORSUN_STYLE = """
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tornado import gen

    from forsun import config
    from forsun.action.action import Action
    from forsun.extension import Extension

    executor = ThreadPoolExecutor(4)


    def do_work(path, key, ts, params):
        # runs in a worker thread: prove it, so the test sees it wasn't the loop's
        with open(path, "a") as f:
            f.write("%s %s %s %s %s\\n" % (key, ts, params.get("job"),
                    threading.current_thread().name.startswith("ThreadPoolExecutor"),
                    config.get("STORE_DRIVER")))


    class WorkAction(Action):
        @gen.coroutine
        def execute(self, *args, **kwargs):
            yield executor.submit(do_work, self.params["file"], self.plan.key, self.ts,
                                  self.params)


    class WorkExtension(Extension):
        name = "work"

        def register(self):
            self.register_action("work", WorkAction)

        def uninit(self):
            executor.shutdown()
            marker = os.environ.get("WORK_UNINIT_MARKER")
            if marker:
                open(marker, "w").close()
"""


def write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def create_and_observe(server: Server, action: str, out: Path) -> str:
    """Create a one-shot plan of ``action`` firing in 1 s; return what it wrote."""
    server.ok(
        "PUT",
        "/v1/plan",
        {
            "key": "ext-job",
            "seconds": 1,
            "count": 1,
            "action": action,
            "params": {"file": str(out), "job": "invoice-42"},
        },
    )
    assert wait_until(lambda: out.exists() and out.read_text().endswith("\n"), 15), server.log()
    return out.read_text()


def test_forsun_style_extension_via_forsun_flags(tmp_path: Path) -> None:
    ext_dir = tmp_path / "forsun-extensions"
    write(ext_dir, "work_ext.py", FORSUN_STYLE)
    marker = tmp_path / "uninit-ran"
    server = Server(
        tmp_path / "data",
        "--extension-path",
        str(ext_dir),
        "--extension",
        "work_ext.WorkExtension",
        env={"WORK_UNINIT_MARKER": str(marker)},
    ).start()
    try:
        info = server.ok("GET", "/v1/info")
        assert "work" in info["actions"].split(";")
        assert info["extensions"] == "work"
        assert info["extension_error_count"] == "0"
        text = create_and_observe(server, "work", tmp_path / "out.txt")
        key, ts, job, in_thread, driver = text.split()
        assert (key, job, in_thread, driver) == ("ext-job", "invoice-42", "True", "sqlite")
        assert int(ts) > 1_600_000_000
    finally:
        assert server.stop() == 0
    assert marker.exists()  # uninit ran at stop


def test_forsun_style_extension_via_the_conf_file(tmp_path: Path) -> None:
    ext_dir = tmp_path / "forsun-extensions"
    write(ext_dir, "work_ext.py", FORSUN_STYLE)
    conf = tmp_path / "forsun.conf"
    conf.write_text(
        f"log_level = INFO\n\n[extension]\npath = {ext_dir}\nextensions = work_ext.WorkExtension\n"
    )
    server = Server(tmp_path / "data", "--conf", str(conf)).start()
    try:
        info = server.ok("GET", "/v1/info")
        assert "work" in info["actions"].split(";") and info["extensions"] == "work"
        assert create_and_observe(server, "work", tmp_path / "out.txt").startswith("ext-job ")
    finally:
        server.stop()


def test_drop_in_folder_is_loaded_without_naming_anything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write(data / "extensions", "work_ext.py", FORSUN_STYLE)
    write(data / "extensions" / "lib", "shared_helper.py", "TAG = 'from-lib'\n")
    write(
        data / "extensions",
        "tagger.py",
        """
        import asyncio
        from shared_helper import TAG
        from forsun_box.actions.base import Action
        from forsun_box.extensions import Extension

        class Tag(Action):
            async def execute(self, *args, **kwargs):
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, self.write)

            def write(self):
                with open(self.params["file"], "a") as f:
                    f.write(TAG + " " + self.plan.key + "\\n")

        class Tagger(Extension):
            name = "tagger"
            def register(self):
                self.register_action("tag", Tag)
    """,
    )
    server = Server(data).start()
    try:
        info = server.ok("GET", "/v1/info")
        assert {"work", "tag"} <= set(info["actions"].split(";"))
        assert set(info["extensions"].split(";")) == {"work", "tagger"}
        assert create_and_observe(server, "tag", tmp_path / "tag.txt") == "from-lib ext-job\n"
    finally:
        server.stop()


def test_broken_extensions_are_reported_and_the_service_serves(tmp_path: Path) -> None:
    folder = tmp_path / "drop-in"
    syntax = write(folder, "broken_syntax.py", "class Nope(:\n    pass\n")
    failing = write(
        folder,
        "broken_register.py",
        """
        from forsun.extension import Extension

        class Failing(Extension):
            name = "failing"
            def register(self):
                raise RuntimeError("cannot reach the broker")
    """,
    )
    write(folder, "work_ext.py", FORSUN_STYLE)
    server = Server(
        tmp_path / "data",
        "--extensions-dir",
        str(folder),
        "--extension",
        "not_installed_anywhere.Thing",
    ).start()
    try:
        info = server.ok("GET", "/v1/info")
        assert info["extensions"] == "work"
        assert info["extension_error_count"] == "3"
        log = server.log()
        assert f"{syntax}:1: SyntaxError" in log
        assert f"{failing}" in log and "cannot reach the broker" in log
        assert "not_installed_anywhere" in log
        assert f"{syntax}:1" in info["extension_errors"]
        # still serving: plans are created and fired
        assert create_and_observe(server, "work", tmp_path / "out.txt").startswith("ext-job ")
    finally:
        assert server.stop() == 0


def test_an_extension_store_is_chosen_with_driver(tmp_path: Path) -> None:
    folder = tmp_path / "drop-in"
    write(
        folder,
        "volatile_store.py",
        """
        from forsun.extension import Extension
        from forsun_box.store.memory import MemoryStore

        class VolatileStore(MemoryStore):
            name = "volatile"

            def __init__(self, config):
                super().__init__(None, max_runs_per_key=config.max_runs_per_key)

        class Volatile(Extension):
            name = "volatile-store"
            def register(self):
                self.register_store("volatile", VolatileStore)
    """,
    )
    server = Server(
        tmp_path / "data", "--extensions-dir", str(folder), "--driver", "volatile"
    ).start()
    try:
        info = server.ok("GET", "/v1/info")
        assert info["current_store"] == "volatile"
        assert "volatile" in info["stores"].split(";")
        server.ok(
            "PUT",
            "/v1/plan",
            {"key": "v1", "seconds": 600, "action": "shell", "params": {"cmd": "true"}},
        )
        assert server.ok("GET", "/v1/keys?prefix=v") == ["v1"]
    finally:
        assert server.stop() == 0
    assert not list((tmp_path / "data").glob("*.db"))  # nothing went to the sqlite store
