"""The firing process: a small process of the service's own that sends the http requests
and spawns the shell commands of firings (:mod:`forsun_box.firing.worker`), and the
service's side of it (:mod:`forsun_box.firing.client`)."""
