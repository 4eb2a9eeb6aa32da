#!/usr/bin/env bash
# Start RabbitMQ and Redis when they are installed but not answering on their local
# default ports. Services that are not installed are reported, not fatal: the parts of
# the suite that need them say so and skip, and the demo falls back to local mode.
set -u

deadline_wait() { # name, seconds, probe command...
  local name=$1 seconds=$2; shift 2
  local end=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS >= end )); then
      echo "services: $name did not answer within ${seconds}s" >&2
      return 1
    fi
    sleep 0.5
  done
}

port_open() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

if port_open 127.0.0.1 6379; then
  echo "services: redis is running"
elif command -v redis-server >/dev/null; then
  echo "services: starting redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  deadline_wait redis 30 port_open 127.0.0.1 6379 && echo "services: redis is up"
else
  echo "services: redis is not installed (apt-get install redis-server)"
fi

if port_open 127.0.0.1 5672; then
  echo "services: rabbitmq is running"
elif command -v rabbitmq-server >/dev/null; then
  echo "services: starting rabbitmq"
  rabbitmq-server -detached >/dev/null 2>&1
  deadline_wait rabbitmq 120 port_open 127.0.0.1 5672 && echo "services: rabbitmq is up"
else
  echo "services: rabbitmq is not installed (apt-get install rabbitmq-server)"
fi
exit 0
