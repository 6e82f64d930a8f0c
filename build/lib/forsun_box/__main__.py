"""``python -m forsun_box ...`` is the ``forsun-box`` program."""

from forsun_box.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(prog="forsun-box"))
