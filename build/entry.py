"""The frozen executable's entry point: one program, server and client.

``forsun-box serve ...`` runs the server, other commands are the client;
invoked through a link or copy named ``forsund`` or ``forsun`` it is that
program (:func:`forsun_box.cli.main.main` reads the name from
``sys.argv[0]``, which the one-file bootloader sets to the path it was
started by, the link's name included).
"""

from __future__ import annotations

import sys

from forsun_box.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
