"""The frozen executable's entry point: one program, server and client.

``forsun-box serve ...`` runs the server, other commands are the client;
invoked through a link or copy named ``forsund`` or ``forsun`` it is that
program (:func:`forsun_box.cli.main.main` reads the name from
``sys.argv[0]``, which the one-file bootloader sets to the path it was
started by, the link's name included). Started by the service with
``--firing-process``, it is the service's firing process
(:mod:`forsun_box.firing.worker`).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from forsun_box.firing.client import FROZEN_FLAG

    if sys.argv[1:2] == [FROZEN_FLAG]:
        from forsun_box.firing.worker import main as firing_process

        sys.exit(firing_process(sys.argv[2:]))
    from forsun_box.cli.main import main

    sys.exit(main())
