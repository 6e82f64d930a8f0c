"""Conf files laid out as forsun 0.1.4's own (its repository's travis.conf and
forsun.conf.example): the same keys in the same sections, values for a test."""

# The keys of forsun's travis.conf, values for this machine (its layout: globals first).
TRAVIS_LIKE_CONF = """\
# timer service settings, laid out as forsun's travis.conf
port={port}
bind_address=127.0.0.1
http_bind=
server_mode=TIMER
log_file={log}
log_level=DEBUG
log_format=
log_rotate=
log_backup_count=64

[store]
driver=redis
status_expried = 0
mem_store_file=
mem_time_rate=1
redis_host=127.0.0.1
redis_port={redis_port}
redis_db=0
STORE_REDIS_PASSWORD=
redis_prefix={prefix}
redis_server_id=0
redis_max_connections=8
redis_client_timeout=7200
redis_bulk_size=5
redis_currenttime_expried=2592000
redis_plan_expried=604800
redis_plantime_expried=604800

[action]
retry_delay_seconds=3
retry_delay_rate=1
retry_max_count=3
poll_idle_seconds=120
shell_cwd={cwd}
http_max_clients=64
http_connect_timeout=5
http_request_timeout=120
http_user_agent=
redis_max_connections=8
redis_client_timeout=7200
redis_bulk_size=5
thrift_max_connections=64
mysql_user=root
mysql_passwd=
mysql_max_connections=8
mysql_wait_connection_timeout=7200
mysql_idle_seconds=120

[extension]
path=
extensions=
"""


# The keys of forsun's forsun.conf.example (it has no server_mode, log_rotate or
# log_backup_count; mem_store_file is set, extensions name two modules).
EXAMPLE_LIKE_CONF = """\
port=6458
bind_address=127.0.0.1
http_bind=
log_file={log}
log_level=INFO
log_format=

[store]
driver=mem
status_expried = 0
mem_store_file={dump}
redis_host=127.0.0.1
redis_port=6379
redis_db=0
redis_prefix=forsun
redis_server_id=0
redis_max_connections=8
redis_client_timeout=7200
redis_bulk_size=5
redis_currenttime_expried=2592000
redis_plan_expried=604800
redis_plantime_expried=604800

[action]
retry_delay_seconds=3
retry_delay_rate=1
retry_max_count=3
poll_idle_seconds=120
shell_cwd=/tmp
http_max_clients=64
http_connect_timeout=5
http_request_timeout=120
http_user_agent=
redis_max_connections=8
redis_client_timeout=7200
redis_bulk_size=5
thrift_max_connections=64
mysql_user=root
mysql_passwd=
mysql_max_connections=8
mysql_wait_connection_timeout=7200
mysql_idle_seconds=120

[extension]
path=
extensions=a;b
"""
